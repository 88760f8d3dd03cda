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
# # 03 · Load balancing and capacity
#
# **After this notebook you can**
# - say what an unbalanced router costs (compute waiting on the busiest expert, padding, dropped tokens) and measure it;
# - compute an expert's capacity, predict which tokens are dropped under each priority rule, and show that a dropped token gets *zero* expert output and continues only through the residual connection;
# - show that under a capacity limit a sequence's output depends on the other sequences in its batch, and that it does not when routing is dropless;
# - derive the Switch auxiliary loss step by step (why f·P, why only P carries gradient, its value under uniform routing and under collapse) and check every step numerically;
# - explain the router z-loss, DeepSeek-V3's loss-free balancing by a bias with a sign rule, and the small sequence-wise loss it keeps;
# - compare, on one skewed router, no balancing, noise, the auxiliary loss and the bias, step by step;
# - drive the capacity explorer.
#
# **Time**: about 60 minutes to read; the notebook runs in under 30 seconds on 2 CPU cores.
#
# Every checkable claim in the text is checked by an `assert` in the next cell. Shapes: `N` tokens, `D` model width, `F` expert width, `E` experts, `K` experts per token, `C` capacity per expert, `B` sequences, `T` sequence length.

# %%
import math
import platform

import plotly
import plotly.graph_objects as go
import torch
from torch.utils.flop_counter import FlopCounterMode

import moe_lab
from moe_lab import MoEConfig, MoELayer, expert_capacity
from moe_lab.balancing import (
    assignment_fractions,
    load_balancing_loss,
    router_z_loss,
    sequence_balance_loss,
    update_selection_bias,
)
from moe_lab.dispatch import capacity_queue, dispatch_capacity, dispatch_sorted
from moe_lab.routers import RoutingResult
from moe_lab.viz import CapacityExplorer, CapacityState, gate_weight, grouped_bar_figure, line_figure, load_cv, token_batch

torch.manual_seed(0)
torch.set_num_threads(1)  # small tensors: one thread is as fast and keeps results steady on a shared CPU
print(f"python {platform.python_version()} | torch {torch.__version__} | plotly {plotly.__version__}"
      f" | moe_lab {moe_lab.__version__} | torch threads {torch.get_num_threads()}")

# %% [markdown]
# ## 1. What imbalance costs
#
# A router that prefers some experts is the normal case, not a bug: routers start with uneven preferences, and nothing in the task loss evens them out (section 8 measures that).
# Our running example is a router with uneven preferences: the seeded toy gate of `moe_lab.viz.gate_weight` on our structured tokens, plus a skew (`skew=1.0`: expert 0 gets +1 logit, down to −1 for expert 7), on 1024 tokens, top-2 of 8.
#
# What that costs depends on where the experts run:
# - **Expert parallelism** (experts on different devices, notebook 07): every device waits for the busiest one, so a layer takes as long as the *maximum* load. The useful fraction of the step is `mean load / max load`.
#   Wang et al. (2024) call the excess `MaxVio = (max load − mean load) / mean load`.
# - **Fixed-shape buffers** (the GShard/Switch `capacity` dispatch): each expert's buffer must hold its largest load, so every expert computes `max load` rows; the FLOPs are `max/mean` times the useful ones, and the rest is padding.
# - **A capacity limit** instead of a buffer that large: tokens are dropped (section 2).
#
# **Claims**: for this router the useful fraction is `1 / (1 + MaxVio)`; and `moe_lab`'s capacity dispatch, sized to hold the largest load, spends exactly `max/mean` times the FLOPs of the dropless sorted dispatch (counted by `FlopCounterMode`).

# %%
D, F_EXPERT, E, K, N = 16, 32, 8, 2, 1024
tokens = token_batch(N, D, seed=0).x  # (N, D)


def skewed_layer(skew=1.0, **config):
    # An MoELayer with the seeded toy gate, skewed by +skew logits for expert 0 down to -skew for the last.
    torch.manual_seed(0)
    defaults = dict(d_model=D, d_expert=F_EXPERT, n_experts=E, top_k=K)
    layer = MoELayer(MoEConfig(**{**defaults, **config}))
    with torch.no_grad():
        layer.router.gate.weight.copy_(gate_weight(layer.config.routed_experts, D, seed=0, skew=skew))
    return layer


layer = skewed_layer()
with torch.no_grad():
    routing = layer.router(tokens)
load = routing.tokens_per_expert().float()
mean_load, max_load = load.mean().item(), load.max().item()
max_vio = (max_load - mean_load) / mean_load
print(f"load per expert {load.int().tolist()}: mean {mean_load:.0f}, max {max_load:.0f}, MaxVio {max_vio:.2f},"
      f" useful fraction {mean_load / max_load:.0%}")
assert mean_load == N * K / E
assert math.isclose(mean_load / max_load, 1 / (1 + max_vio))

with torch.no_grad(), FlopCounterMode(display=False) as padded:
    dispatch_capacity(tokens, routing, layer.experts)  # capacity None: C = the largest load
with torch.no_grad(), FlopCounterMode(display=False) as dropless:
    dispatch_sorted(tokens, routing, layer.experts)
ratio = padded.get_total_flops() / dropless.get_total_flops()
print(f"FLOPs: padded buffer {padded.get_total_flops():,} vs dropless {dropless.get_total_flops():,}, ratio {ratio:.3f}")
assert math.isclose(ratio, max_load / mean_load)

# %% [markdown]
# ## 2. Capacity factor, and who gets dropped
#
# The fixed-shape alternative is to give every expert a **capacity** of
#
# `C = ceil(cf · N · K / E)`
#
# assignments (Fedus et al. 2021, eq. (3), generalized to K choices as in GShard, Lepikhin et al. 2020), where `N·K/E` is the average load and the **capacity factor** `cf` is the headroom.
# Assignments beyond an expert's C are **dropped**. Two facts follow from the formula:
# - at `cf = 1` any imbalance at all drops something;
# - at `cf ≥ E/K` nothing can be dropped: then `C ≥ N`, and a token uses an expert at most once.
#
# **Claims**: `moe_lab.expert_capacity` equals the formula; the dropped fraction of our skewed router falls as cf grows, is positive at cf = 1, and is exactly 0 at cf = E/K = 4.

# %%
rows = []
for cf in (0.5, 1.0, 1.25, 1.5, 2.0, E / K):
    capacity = expert_capacity(N, E, K, cf)
    assert capacity == max(1, math.ceil(cf * N * K / E))
    with torch.no_grad():
        out = skewed_layer(dispatch="capacity", capacity_factor=cf)(tokens)
    rows.append((cf, capacity, out.dropped_fraction))
    print(f"cf {cf:4.2f}: C = {capacity:4d} per expert, dropped {out.dropped_fraction:6.1%} of assignments")
dropped = [fraction for _, _, fraction in rows]
assert all(a >= b for a, b in zip(dropped, dropped[1:]))
assert dropped[1] > 0 and dropped[-1] == 0.0


# %% [markdown]
# ### Who is dropped: the priority rule
#
# Each expert accepts assignments in some order until it is full. `moe_lab` offers the two rules used in practice:
#
# - **position** (GShard's top-2, Switch's top-1): every token's first choice, in token order, then every second choice, and so on. Earlier tokens win; a second choice never displaces a first choice.
# - **probability** (the idea of *batch prioritized routing*, Riquelme et al. 2021, V-MoE): assignments with the highest combine weight go first, so the router's least confident choices are dropped.
#
# From scratch first: a plain loop over assignments in priority order, checked against `moe_lab.dispatch.capacity_queue`.

# %%
def capacity_queue_loop(indices, weights, capacity, policy):
    # keep (N, K) bool, by a plain loop. The priority order is slot-major: all first choices, then all second choices.
    n_tokens, k = indices.shape
    order = [(n, slot) for slot in range(k) for n in range(n_tokens)]
    if policy == "probability":
        order.sort(key=lambda ns: -weights[ns].item())  # stable: ties keep the position order
    used = [0] * int(indices.max() + 1)
    keep = torch.zeros(n_tokens, k, dtype=torch.bool)
    for n, slot in order:
        expert = int(indices[n, slot])
        if used[expert] < capacity:
            used[expert] += 1
            keep[n, slot] = True
    return keep


capacity = expert_capacity(N, E, K, 1.0)
for policy in ("position", "probability"):
    ours = capacity_queue_loop(routing.indices, routing.weights, capacity, policy)
    library_keep, _ = capacity_queue(routing, capacity, policy)
    assert torch.equal(ours, library_keep)
    print(f"{policy:11s}: the loop and moe_lab agree; {int((~ours).sum())} of {N * K} assignments dropped")

# %% [markdown]
# What the rules mean for a batch of B = 8 sequences of T = 128 tokens, flattened sequence after sequence into N = 1024 tokens.
# **Claims**: inside every expert, *position* keeps exactly the earliest assignments in priority order and *probability* keeps exactly the highest weights (no dropped assignment outranks a kept one);
# with *position* the last sequence of the batch loses more than the first one (it comes last in every queue) and second choices are dropped more than first choices;
# *probability* drops assignments whose mean weight is lower than that of the kept ones.

# %%
B, T = 8, 128
weights = routing.weights.detach()
priority_rank = torch.arange(K)[None, :] * N + torch.arange(N)[:, None]  # (N, K): slot-major position order
for policy in ("position", "probability"):
    keep, _ = capacity_queue(routing, capacity, policy)
    for expert in range(E):
        mine = routing.indices == expert
        kept, lost = mine & keep, mine & ~keep
        if lost.any():
            if policy == "position":
                assert priority_rank[kept].max() < priority_rank[lost].min()
            else:
                assert weights[kept].min() >= weights[lost].max()
    dropped_per_sequence = (~keep).view(B, T, K).float().mean(dim=(1, 2))  # (B,)
    print(f"{policy:11s}: dropped per sequence {[f'{v:.0%}' for v in dropped_per_sequence.tolist()]};"
          f" first choices {(~keep[:, 0]).float().mean():.0%}, second {(~keep[:, 1]).float().mean():.0%};"
          f" mean weight kept {weights[keep].mean():.2f}, dropped {weights[~keep].mean():.2f}")
    if policy == "position":
        assert dropped_per_sequence[-1] > dropped_per_sequence[0]
        assert (~keep[:, 1]).float().mean() > (~keep[:, 0]).float().mean()
    else:
        assert weights[~keep].mean() < weights[keep].mean()

# %% [markdown]
# ## 3. A dropped token gets zero, and rides the residual
#
# **Myth: "dropped tokens pass through the layer unchanged."** What the MoE block returns for a token whose every assignment was dropped is **zero**: no expert computed anything for it.
# The token is not lost, because the block sits inside a residual connection, `out = h + MoE(h)`: the token's representation continues as `h`, unchanged by this layer (Switch Transformer, section 2.2, describes exactly this).
# The two halves of the myth produce two real bugs: an MoE that *returns* `h` for dropped tokens ("passes them through") adds `h` twice, doubling those tokens' residual stream; and scaling that pass-through by the router probability just rescales the same mistake.
#
# **Claims**, on `moe_lab.MoELayer` with top-1 and cf = 0.5: the MoE output of every dropped token is exactly 0, so `h + MoE(h)` equals `h` bit for bit; the pass-through bug makes it exactly `2h`.

# %%
top1 = skewed_layer(top_k=1, dispatch="capacity", capacity_factor=0.5)
h = tokens[:256]
with torch.no_grad():
    out = top1(h)
lost = out.dropped[:, 0]  # (N,) top-1: a dropped token has no expert at all
print(f"{int(lost.sum())} of {h.shape[0]} tokens dropped; largest |MoE output| among them: {out.y[lost].abs().max().item()}")
assert lost.any() and torch.all(out.y[lost] == 0)
assert torch.equal((h + out.y)[lost], h[lost])  # the residual carries them through unchanged

pass_through = torch.where(lost[:, None], h, out.y)  # the bug: "dropped tokens pass through"
assert torch.equal((h + pass_through)[lost], 2 * h[lost])
print("with the pass-through bug, dropped tokens leave the block as 2h")

# %% [markdown]
# With top-2, a token can lose one of its two experts. `moe_lab` computes the combine weights before applying capacity and does not renormalize the survivor: the token gets `w_kept · expert_kept(x)` with `w_kept < 1`.
# **Claim**: for a token whose second choice was dropped, the output equals its first choice's weighted expert output, computed by hand with the expert alone.

# %%
top2 = skewed_layer(dispatch="capacity", capacity_factor=0.75)
with torch.no_grad():
    out2 = top2(h)
half = torch.nonzero(~out2.dropped[:, 0] & out2.dropped[:, 1]).flatten()
n = int(half[0])
expert, weight = int(out2.routing.indices[n, 0]), out2.routing.weights[n, 0]
with torch.no_grad():
    by_hand = weight * top2.experts.expert_forward(h[n : n + 1], expert)[0]
print(f"token {n}: kept expert {expert} with weight {weight.item():.3f}, second choice dropped")
assert 0 < weight < 1 and torch.allclose(out2.y[n], by_hand, atol=1e-6)

# %% [markdown]
# ## 4. Your output depends on your batch-mates
#
# Under a capacity limit, whether *your* token is dropped depends on how many *other* tokens in the batch chose the same expert before you. So the output of a sequence depends on the other sequences it was batched with: at training time, and in serving, where the batch is whatever requests happened to arrive together.
# Dropless routing (no capacity) has no such coupling: each token's output depends only on itself.
#
# **Claims**: sequence A (32 tokens), placed after batch-mates that want the same experts (a copy of A itself), gets a different output than after unrelated batch-mates, under cf = 1; dropless, its output is the same up to float round-off.

# %%
seq_a = token_batch(32, D, seed=1).x
unrelated = token_batch(32, D, seed=2).x
for label, config in (("capacity, cf=1", dict(dispatch="capacity", capacity_factor=1.0)), ("dropless", {})):
    moe = skewed_layer(**config)
    with torch.no_grad():
        with_unrelated = moe(torch.cat([unrelated, seq_a])).y[32:]  # A is the second half of the batch
        with_rivals = moe(torch.cat([seq_a, seq_a])).y[32:]  # the same tokens queue up before A
    gap = (with_unrelated - with_rivals).abs().max().item()
    print(f"{label:15s}: A's output changes by up to {gap:.2e} with different batch-mates")
    if label == "dropless":
        assert gap < 1e-6
    else:
        assert gap > 1e-2


# %% [markdown]
# ### ... and, in a decoder, on tokens that come later
#
# The batch-mates of a token include the *later tokens of its own sequence*. With top-2 and the
# position rule, every token's first choice queues before any second choice, so a **later** token's
# first choice can take the last slot an **earlier** token's second choice needed. At training time
# the earlier token's output then depends on the future; at generation time the future does not exist
# yet, so the model is trained on outputs it can never reproduce (the same leak as expert choice,
# notebook 02, section 6; `moe_lab/dispatch/common.py` documents it). It is one reason decoder MoEs
# train dropless: DeepSeek-V3 drops no token in training or inference (DeepSeek-AI 2024, section
# 2.1.2, "No Token-Dropping"), and the course's models use the dropless `sorted` dispatch.
#
# **Claims**, first by hand: token 0 chooses experts (0, 1), token 1 chooses (1, 2), capacity 1.
# Alone, token 0 keeps both its choices; once token 1 exists, token 1's *first* choice takes expert
# 1's only slot and token 0's second choice is dropped. Then on `MoELayer`: changing only the second
# half of a 64-token sequence changes the outputs of its first half under capacity (cf = 1), and not
# at all when dropless.

# %%
def hand_routing(indices):
    indices = torch.tensor(indices)  # (N, K)
    n_tokens = indices.shape[0]
    probs = torch.full((n_tokens, 3), 1 / 3)
    return RoutingResult(indices=indices, weights=torch.full(indices.shape, 0.5), probs=probs,
                         logits=probs.log())


alone, _ = capacity_queue(hand_routing([[0, 1]]), capacity=1, drop_policy="position")
with_later, _ = capacity_queue(hand_routing([[0, 1], [1, 2]]), capacity=1, drop_policy="position")
print(f"token 0 alone keeps {alone[0].tolist()}; with token 1 after it: {with_later[0].tolist()}")
assert alone[0].tolist() == [True, True] and with_later[0].tolist() == [True, False]

sequence = token_batch(64, D, seed=3).x
other_future = sequence.clone()
other_future[32:] = token_batch(32, D, seed=4).x  # same past, different future
for label, config in (("capacity, cf=1", dict(dispatch="capacity", capacity_factor=1.0)), ("dropless", {})):
    moe = skewed_layer(**config)
    with torch.no_grad():
        past_gap = (moe(sequence).y[:32] - moe(other_future).y[:32]).abs().max().item()
    print(f"{label:15s}: the first 32 outputs change by up to {past_gap:.2e} when only tokens 32-63 change")
    if label == "dropless":
        assert past_gap < 1e-6
    else:
        assert past_gap > 1e-2


# %% [markdown]
# ## 5. The Switch auxiliary loss, derived
#
# **The goal.** Spread the N·K assignments evenly: each expert should get a fraction `f_i = 1/E`, where
# `f_i = (number of assignments to expert i) / (N·K)`.
#
# **The obstacle.** `f_i` is a count of top-k choices: piecewise constant in the router's weights, with zero gradient almost everywhere. You cannot minimize `Σ f_i²` by gradient descent.
#
# **The trick** (Fedus et al. 2021, eq. (4)-(6); GShard uses the same idea): pair `f` with something differentiable that moves the same way, the mean router probability
# `P_i = (1/N) Σ_n p_{n,i}`, and minimize
#
# `L_aux = E · Σ_i f_i · P_i`   (times a weight α, 0.01 in Switch).
#
# Treat `f` as a constant: `∂L/∂P_i = E · f_i`. Gradient descent lowers every `P_i` in proportion to how overloaded expert i is; because the router chooses by probability, lowering `P_i` moves tokens away from expert i, and `f` follows `P`.
# So **only P carries gradient**, and `f` only sets *how hard* each expert's probability is pushed down.
#
# **Its values.** Uniform routing: `f_i = P_i = 1/E`, `L = E · E · (1/E²) = 1`, for every K (f is normalized over the N·K assignments). Collapse onto one expert with top-1: `f_1 = P_1 = 1`, `L = E`.
# If the choices matched the probabilities exactly (`f = P`), `L = E·Σ P_i² ≥ 1` by Cauchy-Schwarz, with equality only at uniform. The often-quoted "the minimum is 1, reached only at uniform routing" holds only then, and hard top-k choices never match soft probabilities exactly. Two counterexamples, shown below with choices that *do* follow the probabilities (each token takes its most probable expert): the loss can fall **below 1** (E = 2, top-1: 90% of the tokens at p = (0.51, 0.49), 10% at (0, 1), give 0.934), and it equals **exactly 1 whenever either f or P is uniform** (`L = E·Σ f_i/E = 1` for uniform P, whatever f), so a reading of 1 does not prove balance.
# **Scaling conventions differ**: Hugging Face's Mixtral code normalizes f over N tokens instead of N·K assignments, so its value is K times ours (K at uniform routing).
#
# From scratch, then every step checked.

# %%
def switch_aux_loss(probs, indices):
    # E * sum_i f_i P_i. probs (N, E) full softmax; indices (N, K) chosen experts.
    n_experts = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).float()  # (E,) integers: no gradient
    f = counts / counts.sum()  # fraction of the N*K assignments
    P = probs.mean(dim=0)  # (E,) mean router probability: differentiable
    return n_experts * (f * P).sum()


probs = routing.probs.detach().clone().requires_grad_(True)  # the skewed router's probabilities (N, E)
ours = switch_aux_loss(probs, routing.indices)
theirs = load_balancing_loss(probs, routing.indices)
print(f"skewed router: scratch {ours.item():.5f}, moe_lab {theirs.item():.5f}")
assert torch.allclose(ours, theirs)

f = assignment_fractions(routing.indices, E)
(grad,) = torch.autograd.grad(theirs, probs)
assert not f.requires_grad  # f carries no gradient
assert torch.allclose(grad, (E * f / N).expand(N, E))  # dL/dp[n, i] = E f_i / N for every token n
print("gradient w.r.t. every token's probabilities is E * f / N:", [round(v, 5) for v in (E * f / N).tolist()])


# %%
def balanced_indices(n_tokens, n_experts, k):
    # (N, K): assignment n*K + slot goes to expert (n*K + slot) mod E: every expert gets N*K/E, distinct within a token
    return (torch.arange(n_tokens * k) % n_experts).view(n_tokens, k)


uniform = torch.full((N, E), 1 / E)
for k in (1, 2, 4):
    value = load_balancing_loss(uniform, balanced_indices(N, E, k)).item()
    hf_style = E * ((torch.bincount(balanced_indices(N, E, k).reshape(-1), minlength=E) / N) * uniform.mean(0)).sum().item()
    print(f"uniform routing, K={k}: loss {value}, Hugging Face scaling {hf_style}")
    assert value == 1.0 and math.isclose(hf_style, k)

collapsed = load_balancing_loss(torch.eye(E)[torch.zeros(N, dtype=torch.long)], torch.zeros(N, 1, dtype=torch.long))
print(f"collapse onto one expert (top-1): {collapsed.item()}")
assert collapsed.item() == E

# Choices and probabilities that disagree: every token chose expert 0, which the probabilities rate at 2%.
disagree = torch.full((N, E), 0.98 / (E - 1))
disagree[:, 0] = 0.02
below_one = load_balancing_loss(disagree, torch.zeros(N, 1, dtype=torch.long)).item()
print(f"choices against the probabilities: {below_one:.2f} (below 1)")
assert below_one < 1

# %%
# Counterexample 1: E = 2, top-1, every token takes its most probable expert, and the loss is below 1.
probs_a = torch.tensor([[0.51, 0.49]] * 90 + [[0.0, 1.0]] * 10)  # (100, 2)
loss_a = load_balancing_loss(probs_a, probs_a.argmax(-1, keepdim=True)).item()
# by hand: f = (0.9, 0.1), P = (0.459, 0.541), L = 2 (0.9 * 0.459 + 0.1 * 0.541) = 0.9344
print(f"choices follow the probabilities, loss {loss_a:.4f}")
assert math.isclose(loss_a, 0.9344, abs_tol=1e-4)

# Counterexample 2: E = 3, top-1, choices follow the probabilities, P is exactly uniform, and
# expert 1 receives no token at all: the loss is exactly 1 with one expert dead.
probs_b = torch.tensor([[0.5, 0.4, 0.1]] * 2 + [[0.0, 0.2, 0.8]])  # (3, 3); P = (1/3, 1/3, 1/3)
chosen_b = probs_b.argmax(-1, keepdim=True)  # experts 0, 0, 2
loss_b = load_balancing_loss(probs_b, chosen_b).item()
load_b = torch.bincount(chosen_b.flatten(), minlength=3).tolist()
print(f"uniform P, load {load_b}: loss {loss_b:.6f}")
assert torch.allclose(probs_b.mean(0), torch.full((3,), 1 / 3)) and load_b == [2, 0, 1]
assert math.isclose(loss_b, 1.0, abs_tol=1e-6)

# %% [markdown]
# **Claim**: one gradient step on the auxiliary loss alone (plain SGD on the router's gate) lowers the mean probability of the most loaded expert and lowers the loss.

# %%
step_layer = skewed_layer()
busiest = int(routing.tokens_per_expert().argmax())
before = step_layer.router(tokens)
aux_before = load_balancing_loss(before.probs, before.indices)
aux_before.backward()
with torch.no_grad():
    step_layer.router.gate.weight -= 1.0 * step_layer.router.gate.weight.grad  # SGD, learning rate 1
    after = step_layer.router(tokens)
    aux_after = load_balancing_loss(after.probs, after.indices)
print(f"P of expert {busiest}: {before.probs[:, busiest].mean():.4f} -> {after.probs[:, busiest].mean():.4f};"
      f" loss {aux_before.item():.4f} -> {aux_after.item():.4f}")
assert after.probs[:, busiest].mean() < before.probs[:, busiest].mean() and aux_after < aux_before


# %% [markdown]
# ## 6. The router z-loss
#
# ST-MoE (Zoph et al. 2022, eq. (5)) adds `L_z = (1/N) Σ_n (log Σ_i e^{z_{n,i}})²`, weighted by 0.001, to keep the router's logits small.
# Softmax ignores a constant added to all logits, so nothing else in the model pins their level or scale, and they can drift large. Large logits hurt in low precision: bfloat16 keeps 8 significant bits, so a logit near 100 is stored with a spacing of 0.5 (an error of up to 0.25 per logit), and the probabilities computed from such logits can be off by a factor of up to `e^0.5 ≈ 1.6`.
#
# **Claims**: the scratch z-loss equals `moe_lab`'s; shifting all logits by 5 leaves the probabilities (hence routing) unchanged but raises the z-loss; its gradient pushes every logit down whenever the log-sum-exp is positive;
# rounding logits to bfloat16 perturbs the probabilities more than 10 times as much at logit scale 100 as at scale 1.

# %%
def z_loss(logits):
    return torch.logsumexp(logits, dim=-1).pow(2).mean()  # (N, E) -> scalar


logits = routing.logits.detach().clone().requires_grad_(True)
assert torch.allclose(z_loss(logits), router_z_loss(logits))
shifted = logits.detach() + 5.0
assert torch.allclose(shifted.softmax(-1), logits.softmax(-1), atol=1e-6)
print(f"z-loss {z_loss(logits).item():.3f}; all logits + 5: {z_loss(shifted).item():.3f} (same probabilities)")
assert z_loss(shifted) > z_loss(logits)
(grad,) = torch.autograd.grad(router_z_loss(logits), logits)
positive_rows = torch.logsumexp(logits, -1) > 0
assert positive_rows.any() and torch.all(grad[positive_rows] > 0)  # descent lowers every logit of those rows

errors = {}
noise = torch.randn(4096, E, generator=torch.Generator().manual_seed(0))
for scale in (1.0, 10.0, 100.0):
    exact = (scale * noise).softmax(-1)
    rounded = (scale * noise).bfloat16().float().softmax(-1)
    errors[scale] = (rounded - exact).abs().max().item()
    print(f"logit scale {scale:5.0f}: largest probability error from bfloat16 logits {errors[scale]:.1e}")
assert errors[100.0] > 10 * errors[1.0]

# %% [markdown]
# ## 7. Loss-free balancing: a bias with a sign rule
#
# An auxiliary loss balances by adding gradients that fight the task loss; its weight trades balance against quality.
# Wang et al. (2024), "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", balance without any gradient: keep a per-expert bias `b_i`, add it to the scores **only to choose** experts (notebook 02, section 8: the weights stay unbiased), and after every step move it by a fixed amount in the direction that evens the load:
#
# `b_i ← b_i + u · sign(mean load − load_i)`
#
# Overloaded experts lose a little bias, underloaded ones gain. DeepSeek-V3 (DeepSeek-AI 2024) states the rule in section 2.1.2 and its schedule in section 4.2: the bias update speed is `u = 0.001` for the first 14.3T of its 14.8T pre-training tokens and `0.0` for the remaining 500B, so the biases are frozen for the end of pre-training (while the learning rate also decays) and stay fixed afterwards.
#
# **Claims**: the scratch rule equals `moe_lab.balancing.update_selection_bias`; an expert exactly at the mean load keeps its bias; with speed 0 (DeepSeek-V3's last 500B tokens) no bias moves; and the bias is a buffer, not a parameter: no optimizer and no gradient ever touch it.

# %%
load = torch.tensor([40.0, 10, 25, 25, 30, 20, 25, 25])  # mean 25
u = 0.001
ours = torch.zeros(E) + u * torch.sign(load.mean() - load)
theirs = update_selection_bias(torch.zeros(E), load, u)
print("bias after one update:", [round(b, 4) for b in theirs.tolist()])
assert torch.equal(ours, theirs)
assert theirs[0] < 0 < theirs[1] and theirs[2] == 0  # overloaded down, underloaded up, at the mean: unchanged
assert torch.equal(update_selection_bias(theirs, load, 0.0), theirs)  # speed 0: frozen

bias_layer = skewed_layer(router="sigmoid_bias", bias_update_rate=u)
assert "router.selection_bias" in dict(bias_layer.named_buffers())
assert "router.selection_bias" not in dict(bias_layer.named_parameters())
out = bias_layer(tokens)
out.y.sum().backward()
assert bias_layer.router.selection_bias.grad is None


# %% [markdown]
# DeepSeek-V3 still keeps a **complementary sequence-wise balance loss** with a tiny weight (α = 0.0001 in its report), to avoid extreme imbalance *inside one sequence* (its eq. (17)-(20)): the same f·P form, computed per sequence with `f_i = E/(K·T) · #{t : i chosen}` (1 at balance) and the affinities normalized over experts.
# A batch can be perfectly balanced while each of its sequences uses only half the experts; the batch-level loss cannot see that, the sequence-level one can.
#
# **Claims**: the scratch per-sequence loss equals `moe_lab.balancing.sequence_balance_loss`; for two sequences that each use only 2 of 4 experts (together all 4, evenly), the batch-level loss is at its uniform value 1 while the sequence-level loss is 2.

# %%
def sequence_loss(probs, indices, batch_size, k):
    # Per sequence: f_i = E / (K T) * count_i, P_i = mean_t probs; sum_i f_i P_i, averaged over sequences.
    n_tokens, n_experts = probs.shape
    per_sequence = []
    for seq_probs, seq_indices in zip(probs.view(batch_size, -1, n_experts), indices.view(batch_size, -1, k)):
        seq_len = seq_probs.shape[0]
        counts = torch.bincount(seq_indices.reshape(-1), minlength=n_experts).float()
        per_sequence.append((n_experts / (k * seq_len) * counts * seq_probs.mean(0)).sum())
    return torch.stack(per_sequence).mean()


# 2 sequences of 8 tokens, 4 experts, top-1: sequence 0 uses experts 0 and 1, sequence 1 uses experts 2 and 3.
chosen = torch.tensor([0, 1] * 4 + [2, 3] * 4).view(16, 1)
split_probs = torch.eye(4)[chosen.flatten()]  # each token's probability sits on its chosen expert
batch_level = load_balancing_loss(split_probs, chosen).item()
sequence_level = sequence_balance_loss(split_probs, chosen, batch_size=2, top_k=1).item()
print(f"batch-level loss {batch_level}, sequence-level loss {sequence_level}")
assert math.isclose(sequence_loss(split_probs, chosen, 2, 1).item(), sequence_level)
assert batch_level == 1.0 and sequence_level == 2.0

rand_probs = torch.rand(64, E).softmax(-1)
rand_idx = rand_probs.topk(K).indices
assert torch.allclose(sequence_loss(rand_probs, rand_idx, 4, K), sequence_balance_loss(rand_probs, rand_idx, 4, K))

# %% [markdown]
# ## 8. The balancing methods, side by side
#
# One skewed router (skew 2: expert 0 starts with +2 logits, expert 7 with −2), one small regression task (an MoE layer learning a fixed random dense FFN), 200 steps of Adam, four ways to balance:
#
# | method | what changes | weight here |
# |---|---|---|
# | none | nothing | |
# | noise only | `noisy_topk`: learned Gaussian noise on the logits (Shazeer et al. 2017) | |
# | auxiliary loss | Switch's `E·Σ f_i P_i` added to the task loss | α = 0.01, as in Switch |
# | loss-free bias | sign-rule bias updates (Wang et al. 2024) | u = 0.01 |
#
# The bias moves by u per step, in units of the router's scores (probabilities here), so DeepSeek-V3's u = 0.001 would need about ten times more steps than this notebook can afford to run; u = 0.01 shows the same dynamics in 200 steps.
# The measure is MaxVio (section 1) of every step's batch of 256 tokens.
#
# **Claims**, on the mean MaxVio of the last 20 steps: with no balancing the load stays skewed (MaxVio above 1); noise alone leaves it more than twice as skewed as the auxiliary loss does (the myth from notebook 02, settled); the auxiliary loss and the bias each bring MaxVio below 0.4.

# %%
pool = token_batch(2048, D, seed=0).x  # training tokens
torch.manual_seed(1)
teacher = moe_lab.DenseFFN(D, 64)
with torch.no_grad():
    targets = teacher(pool)  # the task: imitate a fixed dense FFN


from moe_lab.balancing import max_violation  # (max load - mean) / mean, Wang et al. 2024


def train(method, steps=200, batch=256, alpha=0.01, u=0.01):
    config = dict(aux_loss_weight=0.0)
    if method == "noise only":
        config["router"] = "noisy_topk"
    elif method == "auxiliary loss":
        config["aux_loss_weight"] = alpha
    elif method == "loss-free bias":
        config["bias_update_rate"] = u
    layer = skewed_layer(skew=2.0, **config)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)  # every method sees the same batches
    history = []
    for _ in range(steps):
        rows = torch.randint(0, pool.shape[0], (batch,), generator=generator)
        out = layer(pool[rows])
        task = (out.y - targets[rows]).pow(2).mean()
        optimizer.zero_grad()
        (task + out.aux_loss).backward()
        optimizer.step()
        layer.update_bias(out.tokens_per_expert)  # a no-op unless bias_update_rate > 0
        history.append(max_violation(out.tokens_per_expert))
    return history, out.tokens_per_expert, task.item()


methods = ("none", "noise only", "auxiliary loss", "loss-free bias")
results = {method: train(method) for method in methods}
final = {method: sum(history[-20:]) / 20 for method, (history, _, _) in results.items()}
for method, (history, last_load, task) in results.items():
    print(f"{method:15s}: MaxVio {history[0]:.2f} -> {final[method]:.2f} (mean of the last 20 steps);"
          f" last load {last_load.tolist()}; task loss {task:.5f}")
line_figure(range(200), {m: results[m][0] for m in methods}, "Load imbalance while training a skewed router",
            "step", "MaxVio = (max load - mean) / mean").show()
grouped_bar_figure({m: results[m][1].tolist() for m in methods}, "Load per expert at the last step",
                   "expert", "assignments (of 512)").show()
assert final["none"] > 1.0
assert final["noise only"] > 2 * final["auxiliary loss"]
assert final["auxiliary loss"] < 0.4 and final["loss-free bias"] < 0.4

# %% [markdown]
# Noise changes *which* tokens land where, step by step, but it has no feedback from the load, and the skew stays. The auxiliary loss and the bias both read the load and push against it.
# What this toy cannot show is the *cost* of the auxiliary loss to the task at scale, which is why Wang et al. and DeepSeek-V3 moved to the bias; notebook 05 measures balancing and collapse on the course's language model.
#
# ## 9. The capacity explorer
#
# Everything in sections 2-4, live, on `moe_lab.MoELayer` with the capacity dispatch: the top panel shows each expert's kept and dropped assignments against its capacity C, the bottom panel every assignment by token position (red crosses were dropped), with one row for every expert, busy or idle. Things to try, from the starting state (capacity factor 1, top-2, skew 1, position priority):
# - capacity factor 1.0 with skew 1: the crosses sit at the right end of the busy experts' rows (position priority: late tokens lose);
# - switch the drop priority to `probability`: the crosses spread over the batch;
# - raise the skew to 3: a few experts overflow while the rest idle below the line; it takes a capacity factor close to E/K to keep every token, and then most of every buffer is empty;
# - capacity factor 4 (= E/K at top-2 of 8): nothing can be dropped, at any skew.

# %%
capacity_explorer = CapacityExplorer(CapacityState(capacity_factor=1.0, top_k=2, skew=1.0))
capacity_explorer.widget

# %% [markdown]
# The explorer's state is a dataclass, so code can drive it through the same callbacks as the sliders.
# **Claims**: at cf = E/K = 4 nothing is dropped even at skew 4; back at cf = 1 with skew 4, the top panel's kept bars never exceed C, and the title's dropped fraction is the layer's own.
# The cell ends with `capacity_explorer.reset()`, so after "Run All" the explorer above is back in the starting state the list above assumes.

# %%
capacity_explorer.set_state(CapacityState(capacity_factor=4.0, top_k=2, skew=4.0))
assert capacity_explorer.view.dropped_fraction == 0 and len(capacity_explorer.figure.data[4].x) == 0
capacity_explorer.controls["capacity_factor"].value = 1.0  # what moving the slider does
view = capacity_explorer.view
kept_bars = [int(v) for v in capacity_explorer.figure.data[0].y]
print(f"C = {view.capacity}; kept {kept_bars}; dropped {view.dropped_fraction:.1%}")
assert max(kept_bars) <= view.capacity
assert f"dropped {view.output.dropped_fraction:.1%}" in capacity_explorer.figure.layout.title.text
capacity_explorer.reset()  # back to the starting state
assert capacity_explorer.state == CapacityState(capacity_factor=1.0, top_k=2, skew=1.0)

# %% [markdown]
# ## Check yourself
#
# 1. N = 4096 tokens, E = 64 experts, top-8, capacity factor 1.25. What is C? Above which capacity factor can nothing be dropped?
# <details><summary>Answer</summary>
#
# `C = ceil(1.25 · 4096 · 8 / 64) = 640`. Nothing can be dropped once `cf ≥ E/K = 8` (then C ≥ N).
# </details>
#
# 2. A token's only expert was over capacity. What does the MoE block output for it, and what does the next layer see?
# <details><summary>Answer</summary>
#
# The MoE block outputs exactly zero for it; the next layer sees `h + 0 = h`, the token's representation from before the block, carried by the residual connection. An implementation that "passes the token through" the MoE output doubles it to `2h`.
# </details>
#
# 3. Why does the Switch loss multiply f by P instead of just penalizing the variance of f?
# <details><summary>Answer</summary>
#
# f counts discrete choices and has zero gradient almost everywhere. P is differentiable, and with f held constant, `∂L/∂P_i = E·f_i` pushes down each expert's probability in proportion to its load: f decides how hard, P carries the gradient.
# </details>
#
# 4. Your Switch loss reads 0.8. Is that better than perfectly balanced?
# <details><summary>Answer</summary>
#
# No: the loss measures how f and P line up, not balance itself. It falls below 1 when the choices and the probabilities disagree, which a selection bias, noise or a capacity limit cause, but hard top-k choices alone are enough: in section 5, tokens that each take their most probable expert give 0.934. Nor does a reading of exactly 1 prove balance: it is 1 whenever f or P is uniform, and section 5 shows it at 1 with one expert receiving nothing. Look at the load itself (f, its maximum, the dropped fraction). (And with Hugging Face's scaling, uniform reads K, not 1.)
# </details>
#
# 5. Why does the z-loss exist when softmax does not care about the logits' level?
# <details><summary>Answer</summary>
#
# Because nothing else pins their level or scale, they can drift large, and large logits in bfloat16 are stored coarsely (8 significant bits): the probabilities computed from them are distorted. The z-loss keeps `logsumexp` near zero.
# </details>
#
# 6. Under loss-free balancing, an expert's load is exactly at the mean. What happens to its bias, and to the combine weight it gives its tokens?
# <details><summary>Answer</summary>
#
# Its bias does not move (`sign(0) = 0`). The combine weight never depends on the bias at all: the bias only decides which experts are chosen.
# </details>
#
# 7. Two users send the same prompt to a model served with a capacity factor. Can they get different outputs? With dropless routing?
# <details><summary>Answer</summary>
#
# With a capacity factor, yes: which tokens are dropped depends on the other requests in the batch (section 4). Dropless, each token's output depends only on itself (up to float round-off from batch-size-dependent kernels).
# </details>
#
# **Next**: notebook 04 trains a tiny MoE language model and compares it with dense baselines.

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
import math

import torch

from moe_lab.exercises.load_balancing import check_capacity_keep, check_expert_capacity, check_switch_aux_loss


# %% [markdown]
# ### Exercise 1: an expert's capacity
#
# Write `my_expert_capacity(n_tokens, n_experts, top_k, capacity_factor)` returning C, the number of assignments one expert accepts (section 2), as an integer.
# The check compares with `moe_lab.expert_capacity` on seven cases, one of which hides a floating-point trap.

# %%
def my_expert_capacity(n_tokens, n_experts, top_k, capacity_factor):
    # -> C, an int
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def expert_capacity_solution(n_tokens, n_experts, top_k, capacity_factor):
    average_load = n_tokens * top_k / n_experts  # assignments per expert under perfect balance
    # ceil: an exactly average load must fit; the epsilon keeps float round-off (1.1 * 10 / 11 =
    # 1.0000000000000002) from adding a slot; at least 1 slot per expert
    return max(1, math.ceil(capacity_factor * average_load - 1e-9))


# %%
check_expert_capacity(my_expert_capacity, reference=expert_capacity_solution)


# %% [markdown]
# ### Exercise 2: who is dropped
#
# Write `my_capacity_keep(indices, n_experts, capacity)`: from the chosen experts `indices` (N, K), return `keep` (N, K), a bool tensor that is True where the assignment fits in its expert's `capacity`, under the **position** priority of section 2: every token's first choice in token order, then every second choice, and so on.
# The check compares with `moe_lab.dispatch.capacity_queue` on a hand-made batch and on skewed random routings with K = 1, 2, 3.

# %%
def my_capacity_keep(indices, n_experts, capacity):
    # indices (N, K) long -> keep (N, K) bool
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def capacity_keep_solution(indices, n_experts, capacity):
    n_tokens, k = indices.shape
    keep = torch.zeros(n_tokens, k, dtype=torch.bool)
    used = [0] * n_experts  # slots taken in each expert's buffer
    for slot in range(k):  # all first choices, then all second choices, ...
        for token in range(n_tokens):  # ... each in token order
            expert = int(indices[token, slot])
            if used[expert] < capacity:
                used[expert] += 1
                keep[token, slot] = True
    return keep


# %%
check_capacity_keep(my_capacity_keep, reference=capacity_keep_solution)


# %% [markdown]
# ### Exercise 3: the Switch auxiliary loss
#
# Write `my_switch_aux_loss(probs, indices)` returning the scalar `E · Σ_i f_i · P_i` of section 5, from the router's full softmax `probs` (N, E) and the chosen experts `indices` (N, K).
# The check compares the value and the gradient with respect to `probs` with `moe_lab.balancing.load_balancing_loss`, on skewed routers with K = 1, 2, 4, on uniform routing (loss 1) and on collapse (loss E).

# %%
def my_switch_aux_loss(probs, indices):
    # probs (N, E), indices (N, K) long -> a scalar tensor
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def switch_aux_loss_solution(probs, indices):
    n_experts = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).float()  # (E,): no gradient
    f = counts / indices.numel()  # fraction of the N*K assignments per expert
    P = probs.mean(dim=0)  # (E,): mean probability over all tokens, the full softmax
    return n_experts * (f * P).sum()


# %%
check_switch_aux_loss(my_switch_aux_loss, reference=switch_aux_loss_solution)
