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
# # 02 · Routing: which experts does a token use, and with what weight?
#
# **After this notebook you can**
# - write a router from scratch (logits, softmax, top-k, renormalization) and check it against `moe_lab`'s routers;
# - say exactly when the order of softmax and top-k matters (k = 1, and the balancing loss) and when it cannot (the output for k ≥ 2 with renormalization), with property checks to prove it;
# - find and fix the bugs in the MoE code that circulates in interview answers;
# - explain noisy top-k, Switch top-1, expert choice, hash routing and DeepSeek-V3's sigmoid router with a selection-only bias, and the trap in each: noise is not what balances the load, top-1 with renormalization never trains its router, expert choice leaks future tokens in a decoder;
# - write the naive loop dispatch and the sorted dispatch and check them equal, outputs and gradients (notebook 07 times them);
# - drive the routing explorer by hand and from code.
#
# **Time**: about 60 minutes to read; the notebook runs in under 30 seconds on 2 CPU cores.
#
# Every checkable claim in the text is checked by an `assert` in the next cell. Shapes: `N` tokens, `D` model width, `F` expert width, `E` experts, `K` experts per token.

# %%
import platform

import plotly
import torch
from torch import nn

import moe_lab
from moe_lab import DenseFFN, MoEConfig, MoELayer, ModelConfig
from moe_lab.balancing import load_balancing_loss
from moe_lab.cpp_kernels import kernel_status
from moe_lab.dispatch import dispatch_capacity, dispatch_naive, dispatch_sorted, dispatch_sorted_python
from moe_lab.routers import build_router
from moe_lab.viz import RoutingExplorer, RoutingState, gate_weight, load_cv, route_state, token_batch

torch.manual_seed(0)
torch.set_num_threads(1)  # small tensors: one thread is as fast and keeps timings steady on a shared CPU
print(f"python {platform.python_version()} | torch {torch.__version__} | plotly {plotly.__version__}"
      f" | moe_lab {moe_lab.__version__} | torch threads {torch.get_num_threads()}")


# %% [markdown]
# ## 1. A router from scratch
#
# A router is a linear layer followed by a selection rule. For each token vector `x` (width D):
#
# 1. **logits** `z = x W_gᵀ`, one score per expert (`W_g` has shape (E, D));
# 2. **probabilities** `p = softmax(z)` over the E experts;
# 3. **top-k**: keep the K experts with the largest `p`;
# 4. **renormalize** (Mixtral, DeepSeek-V3, Qwen3 with `norm_topk_prob=True`): divide the K kept probabilities by their sum, so the combine weights sum to 1.
#
# The layer's output is `y = Σ_k w_k · expert_{i_k}(x)`. This is the router of Switch (K = 1, no renormalization; Fedus et al. 2021, eq. (1)-(2)), GShard (K = 2; Lepikhin et al. 2020) and Mixtral (K = 2; its paper writes it as a softmax over the top-K logits, Jiang et al. 2024, section 2.1, which section 2 below proves is the same thing).
#
# Our tokens come from `moe_lab.viz.token_batch`: a seeded sentence over a 16-word vocabulary of four kinds (function words, content words, digits, punctuation), where tokens of one kind have similar vectors, so routing has structure you can see.

# %%
def softmax_topk_route(x, w_gate, k, normalize=True):
    # x (N, D), w_gate (E, D) -> indices (N, K), weights (N, K)
    logits = x @ w_gate.T  # (N, E)
    probs = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)  # stable softmax
    probs = probs / probs.sum(dim=-1, keepdim=True)  # (N, E)
    weights, indices = probs.topk(k, dim=-1)  # (N, K), largest first
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return indices, weights


D, E, K = 16, 8, 2
tokens = token_batch(n_tokens=32, d_model=D, seed=0)
w_gate = gate_weight(E, D, seed=0)  # (E, D), seeded
ours_indices, ours_weights = softmax_topk_route(tokens.x, w_gate, K)
for n in range(6):
    print(f"{tokens.words[n]!r:6} -> experts {ours_indices[n].tolist()} with weights {[round(w, 3) for w in ours_weights[n].tolist()]}")

# %% [markdown]
# **Claim**: `moe_lab`'s `softmax_topk` router with the same gate picks the same experts in the same order and gives the same weights.

# %%
router = build_router(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=K, router="softmax_topk"))
with torch.no_grad():
    router.gate.weight.copy_(w_gate)
    routing = router(tokens.x)
print(router)
assert torch.equal(routing.indices, ours_indices)
assert torch.allclose(routing.weights, ours_weights, atol=1e-6)
assert torch.allclose(routing.weights.sum(-1), torch.ones(32))

# %% [markdown]
# ## 2. Where softmax goes, and when it matters
#
# Two orders circulate:
#
# - **softmax then top-k** (`softmax_topk`): probabilities over all E experts, keep the top K, optionally renormalize (Switch, GShard, Mixtral, Qwen-MoE);
# - **top-k then softmax** (`topk_softmax`): keep the K largest logits, softmax over those K only (Shazeer et al. 2017, eq. (3)-(5); the Mixtral paper's formula).
#
# Popular explanations treat the choice as either irrelevant or essential. Both are wrong, and each case can be proved:
#
# 1. **k ≥ 2 with renormalization: the outputs are identical.** Softmax is monotonic, so both pick the same K experts; and for the kept set S, `p_i / Σ_{j∈S} p_j = e^{z_i} / Σ_{j∈S} e^{z_j}`: the softmax normalizer over all E cancels.
# 2. **k = 1 with renormalization (either order): the weight is exactly 1.** The router's score no longer multiplies anything (section 5 measures what that does to its gradient). Switch keeps `p` (no renormalization), which keeps the router in the gradient path.
# 3. **Without renormalization the weights sum to less than 1**, and the output's scale tracks the router's confidence.
# 4. **The balancing loss needs the full softmax over all E experts**, whichever order routes. Feeding it the K renormalized weights (zeros elsewhere) is a real bug: its gradient never reaches the logits of experts that were not chosen, so it cannot pull tokens towards under-used experts.
#
# **Claims 1-3**, checked on 2000 random tokens, random gates, K = 2, 3, 4 and both orders, including through a whole `MoELayer`:

# %%
torch.manual_seed(1)
x = torch.randn(2000, D)
for k in (2, 3, 4):
    config = MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=k, router="softmax_topk")
    layer_a = MoELayer(config)
    layer_b = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=k, router="topk_softmax"))
    layer_b.load_state_dict(layer_a.state_dict())  # same gate, same experts
    with torch.no_grad():
        out_a, out_b = layer_a(x), layer_b(x)
    assert torch.equal(out_a.routing.indices, out_b.routing.indices)
    weight_gap = (out_a.routing.weights - out_b.routing.weights).abs().max().item()
    output_gap = (out_a.y - out_b.y).abs().max().item()
    print(f"k={k}: same experts; largest weight difference {weight_gap:.1e}, output difference {output_gap:.1e}")
    assert weight_gap < 1e-6 and output_gap < 1e-5

# Claim 2: k = 1 with renormalization, in either order, gives a weight of exactly 1; Switch keeps p < 1.
for name in ("softmax_topk", "topk_softmax", "switch"):
    r = build_router(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=1, router=name))
    with torch.no_grad():
        w = r(x).weights
    print(f"k=1 {name:13s}: weights from {w.min().item():.3f} to {w.max().item():.3f}")
    assert torch.all(w == 1.0) if name != "switch" else torch.all(w < 1.0)

# Claim 3: without renormalization the K weights sum to less than 1.
r = build_router(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=2, normalize_topk=False))
with torch.no_grad():
    sums = r(x).weights.sum(-1)
print(f"k=2 without renormalization: weight sums from {sums.min().item():.2f} to {sums.max().item():.2f}")
assert torch.all(sums < 1.0)

# %% [markdown]
# **Claim 4**: the Switch balancing loss computed on the full softmax (right) and on the scattered top-k weights (wrong) can have similar values, but the wrong one sends no gradient to the logits of unchosen experts (zero up to float round-off, below 1e-8), while the right one does. Notebook 03 derives the loss itself.

# %%
torch.manual_seed(2)
logits = torch.randn(256, E, requires_grad=True)  # (N, E)
probs = logits.softmax(dim=-1)
top_weights, top_indices = probs.topk(K, dim=-1)  # (N, K)
right = load_balancing_loss(probs, top_indices)
sparse = torch.zeros_like(probs).scatter(1, top_indices, top_weights / top_weights.sum(-1, keepdim=True))  # (N, E)
wrong = load_balancing_loss(sparse, top_indices)
(grad_right,) = torch.autograd.grad(right, logits, retain_graph=True)
(grad_wrong,) = torch.autograd.grad(wrong, logits)
unchosen = torch.ones_like(logits, dtype=torch.bool).scatter(1, top_indices, False)
print(f"loss on full softmax {right.item():.4f}, on top-k weights {wrong.item():.4f}")
print(f"largest gradient on unchosen experts' logits: right {grad_right[unchosen].abs().max().item():.1e},"
      f" wrong {grad_wrong[unchosen].abs().max().item():.1e}")
assert grad_right[unchosen].abs().max() > 1e-5 and grad_wrong[unchosen].abs().max() < 1e-8


# %% [markdown]
# ## 3. The MoE code that circulates in interview answers
#
# This MoE layer circulates as an interview answer and in quick tutorials. Here it is word for word, as it is passed around (`FFN(d_model)` is some feed-forward block):
#
#     class MoELayer(nn.Module):
#         def __init__(self, d_model, num_experts, top_k=2):
#             self.experts = nn.ModuleList([FFN(d_model) for _ in range(num_experts)])
#             self.gate = nn.Linear(d_model, num_experts)
#             self.top_k = top_k
#
#         def forward(self, x):
#             gate_scores = self.gate(x)
#             top_k_scores, top_k_indices = torch.topk(gate_scores, self.top_k)
#
#             output = torch.zeros_like(x)
#             for i in range(self.top_k):
#                 expert_output = self.experts[top_k_indices[i]](x)
#                 output += top_k_scores[i] * expert_output
#
#             return output
#
# Read it and find the bugs before running it. The next cell runs exactly this text: it takes it from the interview grill's question bank (`moe_lab/grill/questions/routing.toml`, which notebook 08 grades), and a test checks that the copy above is the same text.

# %%
from moe_lab.grill.bank import load_bank  # the interview grill's questions (notebook 08)
from moe_lab.grill.bugs import FFN as GrillFFN  # the FFN(d_model) the snippet assumes: SwiGLU, width 2·d_model
from moe_lab.grill.bugs import check_answer

literal = next(q for q in load_bank() if q.checker == "circulating_snippet").code
namespace = {"nn": nn, "torch": torch, "FFN": GrillFFN}
exec(literal, namespace)  # defines the snippet's class, named MoELayer, in its own namespace
CirculatingMoE = namespace["MoELayer"]  # (not moe_lab's MoELayer, which this notebook uses below)
try:
    CirculatingMoE(D, E, K)
except AttributeError as error:
    print("AttributeError:", error)
    not_built = True
assert not_built

# %% [markdown]
# **Bug 0: it cannot even be built.** `__init__` never calls `super().__init__()`, so `nn.Module` has no registry yet when the first submodule, `self.experts`, is assigned. Add that one line and three more bugs remain:
# - `top_k_indices[i]` is meant as "the i-th choice", but on a batch `x` of shape (N, D) it is **row i: token i's K experts**, a tensor that cannot index a `ModuleList`. The code runs only on one unbatched vector `x` of shape (D,), where `top_k_indices[i]` is a single number, and that is how it gets tested.
# - even then, `top_k_scores[i]`, a raw logit of the gate, is the combine weight: not normalized, possibly negative.
# - batched, nothing is per token: whatever is chosen applies to the whole batch.
#
# **Claims**: with `super().__init__()` added, a batch of 6 tokens crashes and one unbatched vector runs; its combine weights are raw logits: over 200 vectors their sums range far from 1 and some are negative.

# %%
class CirculatingFixedInit(CirculatingMoE):
    def __init__(self, d_model, num_experts, top_k):
        nn.Module.__init__(self)  # the missing super().__init__()
        CirculatingMoE.__init__(self, d_model, num_experts, top_k)


torch.manual_seed(2)
circulating = CirculatingFixedInit(D, E, K)
try:
    circulating(torch.randn(6, D))
except TypeError as error:
    print("batch of 6 -> TypeError:", error)
    batch_crashed = True
assert batch_crashed
vector = torch.randn(D)
with torch.no_grad():
    y_vector = circulating(vector)
    # the combine weights it uses, one vector at a time (the only way it runs), for 200 vectors
    used = torch.stack([torch.topk(circulating.gate(v), K).values for v in torch.randn(200, D)])
sums = used.sum(-1)  # (200,)
print(f"one unbatched vector runs: output {tuple(y_vector.shape)}; over 200 vectors the {K} weights"
      f" sum to {sums.min():.2f}..{sums.max():.2f}, and {int((used < 0).sum())} of {used.numel()} are negative")
assert y_vector.shape == (D,) and used.min() < 0 and sums.max() > 2 and sums.min() < 0.5

# %% [markdown]
# The usual rewrite keeps the loop but makes the batch explicit, indexing the choices as `top_indices[:, k]` (slot k of every token). It is the version discussed below, with our `DenseFFN` experts; its bugs are the circulating ones, in batched form.

# %%
class InterviewMoE(nn.Module):
    # The batched rewrite of the circulating code. Do not use.
    def __init__(self, d_model, d_ff, n_experts, top_k):
        super().__init__()
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(DenseFFN(d_model, d_ff) for _ in range(n_experts))
        self.top_k = top_k

    def forward(self, x):  # x (N, D)
        scores = self.gate(x)  # (N, E)
        top_scores, top_indices = scores.topk(self.top_k, dim=-1)  # (N, K)
        out = torch.zeros_like(x)
        for k in range(self.top_k):
            expert = self.experts[top_indices[:, k]]  # one expert for the whole batch?
            out += top_scores[:, k : k + 1] * expert(x)  # raw scores as weights
        return out


torch.manual_seed(3)
buggy = InterviewMoE(d_model=D, d_ff=32, n_experts=E, top_k=K)
batch = torch.randn(6, D)
try:
    buggy(batch)
except TypeError as error:
    print("TypeError:", error)
    crashed = True
assert crashed


# %% [markdown]
# **Bug 1: it indexes the expert list with a tensor.** `top_indices[:, k]` holds one expert per token; a Python list (`nn.ModuleList`) can only be indexed by one integer, so any batch of more than one token crashes.
# It "works" for a single token, which is how such code gets tested: a tensor with one element converts to an integer.
#
# **Bug 2: the scores are never normalized.** Raw logits become combine weights: they can be negative (an expert's output gets subtracted) and they scale with the gate's weights, so the output has no fixed scale.
# **Claims**: with one token it runs; some weights are negative; multiplying the gate by 10 multiplies the output by exactly 10 (the same experts are chosen, since top-k of scaled scores is unchanged).

# %%
one = batch[:1]  # a single token runs
with torch.no_grad():
    y_one = buggy(one)
    negative = (buggy.gate(batch).topk(K, dim=-1).values < 0).sum().item()
    buggy.gate.weight.mul_(10)
    y_scaled = buggy(one)
    buggy.gate.weight.div_(10)
print(f"single token runs: output norm {y_one.norm():.3f}; gate x10 -> output norm {y_scaled.norm():.3f}")
print(f"negative combine weights among the {6 * K} chosen scores of the batch: {negative}")
assert negative > 0
assert torch.allclose(y_scaled, 10 * y_one, rtol=1e-4)


# %% [markdown]
# **Bug 3, the quick fix**: to silence the `TypeError`, people write `self.experts[top_indices[0, k]]`, the first token's choice. Now every token in the batch goes to the experts the first token chose: a token's output depends on which token happens to come first.
# **Claim**: with that "fix", token 3's output changes when only token 0 changes.

# %%
class QuickFixMoE(InterviewMoE):
    def forward(self, x):
        scores = self.gate(x)
        top_scores, top_indices = scores.topk(self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for k in range(self.top_k):
            expert = self.experts[top_indices[0, k]]  # the first token's expert, for everyone
            out += top_scores[:, k : k + 1] * expert(x)
        return out


quick = QuickFixMoE(D, 32, E, K)
quick.load_state_dict(buggy.state_dict())
other_first = batch.clone()
other_first[0] = torch.randn(D) * 3  # change token 0 only
with torch.no_grad():
    change = (quick(other_first)[3] - quick(batch)[3]).abs().max().item()
    first_experts = (quick.gate(batch[:1]).topk(K).indices, quick.gate(other_first[:1]).topk(K).indices)
print(f"token 0 picks {first_experts[0].tolist()} then {first_experts[1].tolist()}; token 3's output moved by {change:.3f}")
assert change > 1e-3


# %% [markdown]
# **The fix**: softmax over all experts, top-k, renormalize; then, *per expert*, gather the tokens that chose it, run the expert once on all of them, and scatter the weighted outputs back.
# **Claim**: this from-scratch version equals `moe_lab.MoELayer` carrying the same weights (its `nn.ModuleList` experts copied into the stacked `(E, D, F)` tensors).

# %%
class FixedMoE(InterviewMoE):
    def forward(self, x):  # x (N, D)
        indices, weights = softmax_topk_route(x, self.gate.weight, self.top_k)  # (N, K) each
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token_index, slot = torch.where(indices == e)  # tokens (and which of their K slots) chose e
            if token_index.numel():
                out.index_add_(0, token_index, weights[token_index, slot, None] * expert(x[token_index]))
        return out


fixed = FixedMoE(D, 32, E, K)
fixed.load_state_dict(buggy.state_dict())
library = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=K))
with torch.no_grad():
    library.router.gate.weight.copy_(fixed.gate.weight)
    for e, expert in enumerate(fixed.experts):  # nn.Linear stores (out, in): transpose to (in, out)
        library.experts.w_gate[e].copy_(expert.gate.weight.T)
        library.experts.w_up[e].copy_(expert.up.weight.T)
        library.experts.w_down[e].copy_(expert.down.weight.T)
    gap = (fixed(batch) - library(batch).y).abs().max().item()
print(f"fixed scratch MoE vs moe_lab.MoELayer: largest difference {gap:.1e}")
assert gap < 1e-5


# %% [markdown]
# Notebook 08 grades a fix of the literal snippet the same way: it runs the fixed class against `moe_lab.MoELayer` on random batches and names the first bug left. Handed the snippet unchanged, it stops at bug 0.

# %%
correct, verdict = check_answer("circulating_snippet", literal, seed=0)
print(verdict)
assert not correct and "cannot assign module before Module.__init__() call" in verdict


# %% [markdown]
# ## 4. Noisy top-k, and what noise does not do
#
# Shazeer et al. (2017), eq. (3)-(5), add Gaussian noise to the logits before top-k during training, with a learned per-expert scale:
# `H(x) = x W_g + ε · softplus(x W_noise)`, `ε ~ N(0, 1)`, then softmax over the top K of H. At inference the noise is off.
#
# **Myth: "the noise is what balances the load."** In that paper the load is balanced by two auxiliary losses (an importance loss in their section 4, a load loss in Appendix A); the noise gives exploration, and makes their load estimate smooth enough to differentiate.
# Noise alone has no feedback: it does not know which experts are overloaded, it only blurs the router's choice. It lowers imbalance only by overriding the router, which throws away what the router computed.
#
# Measured below with `moe_lab`'s `noisy_topk` router on 512 tokens (the explorer's `FixedNoiseScale` sets the noise std exactly). **Claims**: the router is deterministic in eval mode and random in training mode;
# noise that moves half the tokens' first choice away from the router's choice lowers the load's coefficient of variation (CV: std/mean of the load per expert) by less than a quarter;
# to halve the CV, the noise must override the router for more than 70% of tokens (random routing would agree on 1 in 8).

# %%
def noisy_routing(noise_std):
    return route_state(RoutingState(router="noisy_topk", n_experts=E, top_k=K, noise=noise_std, n_tokens=512, seed=1))[1]


clean = noisy_routing(0.0)  # noise 0: eval mode
assert torch.equal(noisy_routing(0.0).indices, clean.indices)  # eval: deterministic
rows = []
for noise_std in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
    noisy = noisy_routing(noise_std)
    agreement = (noisy.indices[:, 0] == clean.indices[:, 0]).float().mean().item()
    rows.append((noise_std, load_cv(noisy.tokens_per_expert()), agreement))
    print(f"noise std {noise_std:3.1f}: load CV {rows[-1][1]:.2f}, first choice = router's choice for {agreement:.0%} of tokens")

cv = {std: c for std, c, _ in rows}
agree = {std: a for std, _, a in rows}
router_train = route_state(RoutingState(router="noisy_topk", noise=1.0, n_tokens=512, seed=2))[1]
assert not torch.equal(router_train.indices, noisy_routing(1.0).indices)  # training mode: random
assert agree[1.0] <= 0.55 and cv[1.0] > 0.75 * cv[0.0]
halving = [std for std, c, _ in rows if c <= cv[0.0] / 2]
assert halving and agree[halving[0]] < 0.30

# %% [markdown]
# Notebook 03 runs the experiment that settles it: a skewed router trained with noise only, with the auxiliary loss, and with loss-free bias balancing.
#
# ## 5. Switch top-1, and the router that never learns
#
# Switch Transformer (Fedus et al. 2021) routes each token to one expert and multiplies its output by the router probability `p` (eq. (2)): `y = p_i(x) · expert_i(x)`. That factor `p` is the router's only path to the task loss's gradient.
#
# **Myth: "top-1 with renormalized weights trains the router."** Renormalizing one weight gives `p / p = 1`: the output no longer depends on the router's scores, so the language-model loss sends no gradient to the router. It still *routes* (the argmax of its logits), but only an auxiliary loss can move it.
#
# **Claims**, measured on `moe_lab.MoELayer` with a regression loss and no auxiliary loss: the router's gradient is zero up to float round-off (< 1e-8) for top-1 renormalized, and clearly non-zero for Switch (top-1, weight p) and for top-2 renormalized;
# with the auxiliary loss on, the top-1-renormalized router's gradient is *exactly* the auxiliary loss's gradient (the task adds nothing).

# %%
tokens_64 = token_batch(64, D, seed=0).x
torch.manual_seed(4)
target = torch.randn(64, D)


def router_gradient(aux_only=False, aux_loss_weight=0.0, **config):
    torch.manual_seed(0)  # same experts and gate for every variant
    layer = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=4, aux_loss_weight=aux_loss_weight, **config))
    out = layer(tokens_64)
    task = (out.y - target).pow(2).mean()
    (out.aux_loss if aux_only else task + out.aux_loss).backward()
    return layer.router.gate.weight.grad.clone()


grads = {
    "top-1, renormalized": router_gradient(top_k=1, normalize_topk=True),
    "switch (top-1, weight p)": router_gradient(top_k=1, router="switch"),
    "top-2, renormalized": router_gradient(top_k=2, normalize_topk=True),
}
for name, grad in grads.items():
    print(f"{name:25s}: largest router gradient {grad.abs().max().item():.1e}")
assert grads["top-1, renormalized"].abs().max() < 1e-8
assert grads["switch (top-1, weight p)"].abs().max() > 1e-4 and grads["top-2, renormalized"].abs().max() > 1e-4

with_aux = router_gradient(top_k=1, normalize_topk=True, aux_loss_weight=0.01)
aux_alone = router_gradient(aux_only=True, top_k=1, normalize_topk=True, aux_loss_weight=0.01)
print(f"top-1 renormalized with aux loss: |task+aux grad - aux grad| = {(with_aux - aux_alone).abs().max().item():.1e}")
assert torch.allclose(with_aux, aux_alone, atol=1e-8) and aux_alone.abs().max() > 1e-5

# %% [markdown]
# ## 6. Expert choice, and the future it leaks
#
# Expert choice (Zhou et al. 2022) turns routing around: each *expert* takes its top-C tokens by router probability, with `C = ceil(cf · N · K / E)`.
# Every expert gets exactly C tokens, so the load is balanced by construction, and a token can be taken by several experts or by none.
#
# The catch: whether token t is chosen depends on the scores of **every** token in the batch, including the tokens after t in its own sequence. In a decoder trained with teacher forcing, the output at position t then carries information about positions after t, which the model can exploit in training and will not have when generating one token at a time.
#
# **Claims**: every expert's load equals C; some tokens get no expert and some get several;
# changing only the **last** token of a sequence changes the expert-choice layer's output at **earlier** positions, while a token-choice layer's earlier outputs stay bit-identical; and `ModelConfig` refuses expert choice for the course's decoder.

# %%
config = MoEConfig(d_model=D, d_expert=32, n_experts=4, top_k=1, router="expert_choice", capacity_factor=1.0)
torch.manual_seed(5)
expert_choice = MoELayer(config)
token_choice = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=4, top_k=1))
sequence = torch.randn(1, 16, D)  # (B, T, D)
with torch.no_grad():
    out = expert_choice(sequence)
capacity = config.capacity(16)  # ceil(1.0 * 16 * 1 / 4) = 4
experts_per_token = out.routing.mask.sum(-1)  # (N,)
print(f"load per expert {out.tokens_per_expert.tolist()} (C = {capacity}); experts per token {experts_per_token.tolist()}")
assert torch.all(out.tokens_per_expert == capacity)
assert (experts_per_token == 0).any() and (experts_per_token > 1).any()

# Replace only the last token, by a vector that an expert which did not take it scores highest.
expert = int(torch.nonzero(~out.routing.mask[-1])[0])
changed_last = sequence.clone()
changed_last[0, -1] = 10 * expert_choice.router.gate.weight[expert].detach()
with torch.no_grad():
    leak = (expert_choice(changed_last).y - expert_choice(sequence).y)[0, :-1].abs().amax(-1)  # (T-1,)
    causal = (token_choice(changed_last).y - token_choice(sequence).y)[0, :-1].abs().max().item()
print("earlier positions whose expert-choice output changed:", torch.nonzero(leak).flatten().tolist())
print(f"token choice: largest change at earlier positions {causal}")
assert (leak > 0).any() and causal == 0.0

try:
    ModelConfig(d_model=D, n_heads=2, moe=config)
except ValueError as error:
    print("ModelConfig:", str(error)[:110], "...")
    refused = True
assert refused

# %% [markdown]
# ## 7. Hash routing: no router at all
#
# Hash layers (Roller et al. 2021) route by a fixed function of the token id: no learned router, no balancing loss, no collapse. `moe_lab` uses Knuth's multiplicative hash `(id · 2654435761) mod 2³² mod E` and a weight of 1.
# The balance it gets is over the *vocabulary*, not over the text: natural text is Zipfian, and every occurrence of a frequent token lands on the same expert. Roller et al. compare several hash functions, including a frequency-balanced assignment, for this reason.
#
# **Claims**: the routing follows the formula and ignores both the context and the gate; with uniformly drawn ids the load CV is below 0.1, with Zipf-distributed ids (frequency ∝ 1/rank over 1000 ids) it is more than 3 times higher.

# %%
hash_layer = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=1, router="hash"))
generator = torch.Generator().manual_seed(6)
zipf_ids = torch.multinomial(1.0 / torch.arange(1, 1001).float(), 4096, replacement=True, generator=generator)
uniform_ids = torch.randint(0, 1000, (4096,), generator=generator)
vectors = torch.randn(4096, D, generator=generator)
with torch.no_grad():
    zipf = hash_layer(vectors, token_ids=zipf_ids)
    uniform = hash_layer(vectors, token_ids=uniform_ids)
    hash_layer.router.gate.weight.mul_(-3)  # the gate is not used
    shuffled = hash_layer(vectors[torch.randperm(4096, generator=generator)], token_ids=zipf_ids)
expected = (zipf_ids * 2654435761) % 2**32 % E
print(f"load with uniform ids {uniform.tokens_per_expert.tolist()} (CV {load_cv(uniform.tokens_per_expert):.2f})")
print(f"load with Zipf ids    {zipf.tokens_per_expert.tolist()} (CV {load_cv(zipf.tokens_per_expert):.2f})")
assert torch.equal(zipf.routing.indices[:, 0], expected) and torch.equal(shuffled.routing.indices, zipf.routing.indices)
assert load_cv(uniform.tokens_per_expert) < 0.1 < load_cv(zipf.tokens_per_expert)
assert load_cv(zipf.tokens_per_expert) > 3 * load_cv(uniform.tokens_per_expert)


# %% [markdown]
# ## 8. DeepSeek-V3: sigmoid scores and a bias that only chooses
#
# DeepSeek-V3 (DeepSeek-AI 2024, section 2.1.2) routes with per-expert **sigmoid** affinities `s_i = σ(x·w_i)` instead of a softmax, so one expert's score does not depend on the others';
# chooses the top K of `s_i + b_i`, where `b` is a per-expert bias adjusted for load balance (notebook 03); and weights the chosen experts by their **unbiased** scores, normalized over the K chosen and multiplied by a routed scaling factor (2.5 in the released DeepSeek-V3 configuration).
# The bias changes *which* experts are chosen, never the weight a chosen expert gets.
#
# From scratch first, then checked against `moe_lab`'s `sigmoid_bias` router.

# %%
def deepseek_route(x, w_gate, bias, k, scaling):
    # x (N, D), w_gate (E, D), bias (E,) -> indices (N, K), weights (N, K)
    scores = torch.sigmoid(x @ w_gate.T)  # (N, E) independent per expert
    indices = (scores + bias).topk(k, dim=-1).indices  # the bias only chooses
    weights = scores.gather(-1, indices)  # (N, K) unbiased scores of the chosen experts
    return indices, weights / weights.sum(-1, keepdim=True) * scaling


config = MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=K, router="sigmoid_bias", routed_scaling_factor=2.5)
sigmoid_router = build_router(config)
bias = torch.zeros(E)
bias[3] = 0.3  # favour expert 3
with torch.no_grad():
    sigmoid_router.gate.weight.copy_(w_gate)
    plain = sigmoid_router(tokens.x)
    sigmoid_router.selection_bias.copy_(bias)
    biased = sigmoid_router(tokens.x)
ours = deepseek_route(tokens.x, w_gate, bias, K, 2.5)
assert torch.equal(biased.indices, ours[0]) and torch.allclose(biased.weights, ours[1], atol=1e-6)
print("scratch DeepSeek routing equals moe_lab's sigmoid_bias router")

# %% [markdown]
# **Claims**: the sigmoid scores do not sum to 1 over experts; the bias makes expert 3 more popular; every token whose chosen pair did not change keeps *exactly* the same weights;
# the weights always sum to the scaling factor 2.5; and the common misreading, adding the bias to the scores used as weights too, gives different weights.

# %%
scores = torch.sigmoid(tokens.x @ w_gate.T)  # (N, E)
same_pair = (plain.indices.sort(-1).values == biased.indices.sort(-1).values).all(-1)  # (N,)
same_order = (plain.indices == biased.indices).all(-1)
print(f"sigmoid scores sum over experts: {scores.sum(-1).min():.2f} .. {scores.sum(-1).max():.2f}")
print(f"expert 3 load: {plain.tokens_per_expert()[3].item()} -> {biased.tokens_per_expert()[3].item()} of 32 tokens;"
      f" {same_pair.sum().item()} tokens kept their pair")
assert not torch.allclose(scores.sum(-1), torch.ones(32))
assert biased.tokens_per_expert()[3] > plain.tokens_per_expert()[3]
assert same_order.any() and torch.equal(biased.weights[same_order], plain.weights[same_order])
assert torch.allclose(biased.weights.sum(-1), torch.full((32,), 2.5))
misread = (scores + bias).gather(-1, biased.indices)
misread = misread / misread.sum(-1, keepdim=True) * 2.5
assert not torch.allclose(misread, biased.weights, atol=1e-3)


# %% [markdown]
# ## 9. Dispatch: from routing decisions to outputs
#
# Routing says which expert each (token, slot) goes to; *dispatch* computes `y[n] = Σ_k w[n, k] · expert_{i[n, k]}(x[n])`. Three ways:
#
# 1. **per-(token, slot) loop**: the literal formula, N·K tiny matrix products, and a host read (`int(...)`) per assignment;
# 2. **per-expert loop** (`moe_lab.dispatch.dispatch_naive`, the library's reference): for each expert, find its tokens, run it once on all of them, scatter back; E products per projection, but a search over all assignments per expert;
# 3. **sort by expert** (`dispatch_sorted`, the MegaBlocks idea without its kernels; Gale et al. 2022): sort the N·K assignments by expert once, gather the rows once, run each expert on its contiguous slice, scatter back (from scratch below: one `index_add`; the library un-sorts with a gather through the inverse permutation, which is faster on a CPU).
#
# On the CPU the library's `sorted` backend runs this in C++ (`moe_lab/csrc`); backend `sorted_python` is its readable Python version, and the tests hold the two equal.
#
# From scratch first (1 and 3), then everything checked equal to the library.

# %%
def dispatch_token_loop(x, routing, experts):
    # The literal formula: one tiny expert call per (token, slot).
    y = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for slot in range(routing.indices.shape[1]):
            expert = int(routing.indices[n, slot])  # a host read per assignment
            y[n] += routing.weights[n, slot] * experts.expert_forward(x[n : n + 1], expert)[0]
    return y


def dispatch_sort_scratch(x, routing, experts):
    n_tokens, k = routing.indices.shape
    flat_experts = routing.indices.reshape(-1)  # (N*K,) expert of each assignment
    order = torch.argsort(flat_experts, stable=True)  # assignments grouped by expert
    token_of = order // k  # (N*K,) source token of each sorted assignment
    counts = torch.bincount(flat_experts, minlength=experts.n_experts).tolist()  # one host sync
    rows = x[token_of]  # (N*K, D): gathered once
    outputs, start = [], 0
    for expert, count in enumerate(counts):
        outputs.append(experts.expert_forward(rows[start : start + count], expert))  # contiguous slice
        start += count
    weighted = torch.cat(outputs) * routing.weights.reshape(-1)[order].unsqueeze(-1)  # (N*K, D)
    return torch.zeros_like(x).index_add(0, token_of, weighted)  # scatter back


# %% [markdown]
# **Claims**: on a top-2-of-8 layer the two scratch dispatches, the library's naive, sorted (C++ and Python) and capacity (with no capacity limit) backends give the same output;
# and both sorted versions' gradients (for the input, the combine weights, hence the router, and every expert weight) equal the naive reference's.

# %%
torch.manual_seed(7)
layer = MoELayer(MoEConfig(d_model=D, d_expert=32, n_experts=E, top_k=K))
x_small = torch.randn(64, D)
with torch.no_grad():
    routing = layer.router(x_small)
    reference = dispatch_naive(x_small, routing, layer.experts).y
    candidates = {
        "per-(token, slot) loop": dispatch_token_loop(x_small, routing, layer.experts),
        "sort, from scratch": dispatch_sort_scratch(x_small, routing, layer.experts),
        "moe_lab sorted": dispatch_sorted(x_small, routing, layer.experts).y,
        "moe_lab sorted (Python)": dispatch_sorted_python(x_small, routing, layer.experts).y,
        "moe_lab capacity (no limit)": dispatch_capacity(x_small, routing, layer.experts).y,
    }
for name, y in candidates.items():
    gap = (y - reference).abs().max().item()
    print(f"{name:28s} vs naive: {gap:.1e}")
    assert gap < 1e-5


def gradients(backend):
    layer.zero_grad()
    x_req = x_small.clone().requires_grad_(True)
    backend(x_req, layer.router(x_req), layer.experts).y.pow(2).sum().backward()
    named = {"input": x_req.grad, "router gate": layer.router.gate.weight.grad}
    named.update({name: p.grad for name, p in layer.experts.named_parameters()})
    return {name: g.clone() for name, g in named.items()}


naive_grads = gradients(dispatch_naive)
for backend in (dispatch_sorted, dispatch_sorted_python):
    backend_grads = gradients(backend)
    for name in naive_grads:
        assert torch.allclose(backend_grads[name], naive_grads[name], atol=1e-5), name
print("gradients equal for:", ", ".join(naive_grads))
print("sorted runs:", kernel_status())

# %% [markdown]
# Timing these dispatches, the rest of the dispatch ladder (masked loop, GShard's one-hot einsum, grouped GEMM), the GPU path and the CPU memory management behind the sorted backend: notebook 07.
#
# ## 10. The routing explorer
#
# Everything above, live. The explorer runs `moe_lab`'s own routers on the 32-token sentence: the heatmap shows each token's combine weight at each expert (blue; grey where the token was not routed), the bars the load per expert and its coefficient of variation. The title gives the values the router really uses, and a control the chosen router ignores is greyed out, with the reason under the controls. Things to try, from the starting state (8 experts, top-2 `softmax_topk`):
# - `top-k` 1 with `softmax_topk`: every column holds a single 1.0 (section 2); switch to `switch`: the same experts, weights below 1, and the top-k slider greys out (Switch is always top-1);
# - `temperature` down to 0.1: most weights go to nearly 0 or 1; up to 10: top-2 weights approach 1/2 each, and the routing does not change (the top-k of z/T is the top-k of z);
# - `noisy_topk` with noise 2: tokens jump experts, and the load is still uneven (section 4);
# - `expert_choice`: every bar at C (the title gives C and the k it comes from), and some columns all grey: tokens no expert took (section 6);
# - `sigmoid_bias` and a bias of +0.3 on one expert: it fills up, and the other weights in the unchanged columns stay put (section 8);
# - `hash`: the gate and temperature stop mattering (greyed out); the same word always lands on the same expert.

# %%
explorer = RoutingExplorer(RoutingState(n_experts=8, top_k=2))
explorer.widget

# %% [markdown]
# The explorer's state is a small dataclass: set it from code and the same callbacks a slider calls update the figure.
# **Claims**: with temperature 10 instead of 1, every token goes to the same experts (only the weights flatten); with expert choice every bar equals C = ceil(1.0·32·2/8) = 8.
# The cell ends with `explorer.reset()`, so after "Run All" the explorer above is back in the starting state the list above assumes.

# %%
explorer.set_state(RoutingState(temperature=1.0))
chosen_t1 = torch.tensor(explorer.view.routed)  # (E, N): which (expert, token) pairs are routed
weights_t1 = torch.tensor(explorer.figure.data[0].z)
explorer.controls["temperature"].value = 10.0  # exactly what moving the slider does
chosen_t10 = torch.tensor(explorer.view.routed)
print(f"largest weight at temperature 1: {weights_t1.max():.2f}, at 10: {torch.tensor(explorer.figure.data[0].z).max():.2f}")
assert torch.equal(chosen_t1, chosen_t10)
explorer.set_state(RoutingState(router="expert_choice", top_k=2, capacity_factor=1.0))
print("expert choice load:", [int(v) for v in explorer.figure.data[1].y], "| state:", explorer.state)
assert list(explorer.figure.data[1].y) == [8] * 8
explorer.reset()  # back to the starting state
assert explorer.state == RoutingState(n_experts=8, top_k=2)

# %% [markdown]
# ## Check yourself
#
# 1. With K = 2 and renormalization, does it matter whether the softmax comes before or after the top-k? With K = 1?
# <details><summary>Answer</summary>
#
# K = 2: no. Same experts (softmax is monotonic) and same weights (the normalizer over all E cancels), proved in section 2. K = 1: both orders give a weight of exactly 1, which disconnects the router from the task loss (section 5); Switch avoids this by *not* renormalizing, so the weight is p.
# </details>
#
# 2. What are the bugs in the interview MoE, and which one does the single-token test hide?
# <details><summary>Answer</summary>
#
# As it circulates, it does not call `super().__init__()` (it cannot be built), and `top_k_indices[i]` takes token i's row instead of the i-th choice. Once built and batched: it indexes `nn.ModuleList` with a tensor of indices (crashes for a batch, hidden by a test on one unbatched vector), it uses raw logits as weights (negative weights, no fixed scale), and the usual "fix" routes the whole batch by the first token's choice (outputs depend on batch-mates).
# </details>
#
# 3. Your Switch-style model has `normalize_topk=True` and `top_k=1`, with an auxiliary loss. Does the router learn? From what?
# <details><summary>Answer</summary>
#
# Only from the auxiliary loss: its gradient equals the auxiliary loss's exactly (section 5). The router balances the load but never learns which expert is better for a token.
# </details>
#
# 4. Why can't the course's decoder use expert-choice routing, even though it balances the load perfectly?
# <details><summary>Answer</summary>
#
# Whether token t is chosen depends on every token's score in the batch, later positions included, so earlier outputs depend on future tokens (measured in section 6): a train-time leak that generation cannot reproduce.
# </details>
#
# 5. Hash routing has a perfectly balanced assignment of the vocabulary. Why is its load still unbalanced on real text?
# <details><summary>Answer</summary>
#
# Token frequencies are Zipfian: all occurrences of a frequent token land on the same expert. With Zipf ids the load CV was more than 3 times that of uniform ids.
# </details>
#
# 6. In DeepSeek-V3's router, an expert's bias rises by 0.1. Which tokens' combine weights can change?
# <details><summary>Answer</summary>
#
# Only those whose chosen set changes (the bias made that expert enter their top-K). For tokens that keep their experts, the weights are computed from unbiased scores and are bit-identical.
# </details>
#
# 7. Adding noise with std 8 to the logits balanced the load. Why is that not a balancing method?
# <details><summary>Answer</summary>
#
# Because by then the noise decides the routing: the first choice matched the router's for about as many tokens as chance would. Noise has no feedback from the load; balancing needs a signal that pushes over-used experts down (an auxiliary loss, or a bias: notebook 03).
# </details>
#
# **Next**: notebook 03, load balancing and capacity.

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

from moe_lab.exercises.routing import check_deepseek_router, check_sorted_dispatch, check_topk_router


# %% [markdown]
# ### Exercise 1: the top-k router
#
# Write `my_topk_router(logits, k, normalize)`: from router logits (N, E), return `indices` (N, K), the K experts with the largest probability, largest first (as `torch.topk` returns them), and `weights` (N, K), the softmax over **all** E experts at those K, divided by their sum when `normalize` is true (Mixtral) and left as they are when it is false (Switch).
# The check compares experts, weights and the gradient of the weights with respect to the logits with `moe_lab`'s `softmax_topk` router, for K = 1, 2, 4, with and without renormalization (section 2 says which orders of softmax and top-k agree, and when).

# %%
def my_topk_router(logits, k, normalize):
    # logits (N, E) -> indices (N, K) long, weights (N, K)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def topk_router_solution(logits, k, normalize):
    probs = logits.softmax(dim=-1)  # (N, E): over all experts, before choosing
    weights, indices = probs.topk(k, dim=-1)  # (N, K) each, largest first
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)  # the K weights sum to 1
    return indices, weights


# %%
check_topk_router(my_topk_router, reference=topk_router_solution)


# %% [markdown]
# ### Exercise 2: DeepSeek-V3's router
#
# Write `my_deepseek_router(logits, bias, k, scaling)` as section 8 describes it: scores `s = sigmoid(logits)` (N, E); choose the K experts with the largest `s + bias` (largest first); weight them by their **unbiased** scores, divided by their sum and multiplied by `scaling`. Return `(indices, weights)`, both (N, K).
# The check compares with `moe_lab`'s `sigmoid_bias` router carrying the same selection bias (large enough to change some tokens' choice), including the gradient with respect to the logits.

# %%
def my_deepseek_router(logits, bias, k, scaling):
    # logits (N, E), bias (E,) -> indices (N, K) long, weights (N, K)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def deepseek_router_solution(logits, bias, k, scaling):
    scores = torch.sigmoid(logits)  # (N, E), one independent score per expert
    indices = (scores + bias).topk(k, dim=-1).indices  # (N, K): the bias only chooses
    weights = scores.gather(-1, indices)  # (N, K): unbiased scores of the chosen experts
    return indices, weights / weights.sum(dim=-1, keepdim=True) * scaling


# %%
check_deepseek_router(my_deepseek_router, reference=deepseek_router_solution)


# %% [markdown]
# ### Exercise 3: the sorted dispatch
#
# Write `my_sorted_dispatch(x, routing, experts)` returning y (N, D) with `y[n] = Σ_k routing.weights[n, k] · expert_{routing.indices[n, k]}(x[n])`, the way section 9's sorted dispatch does it: sort the N·K assignments by expert, gather their rows of x once, run each expert **once** on its contiguous slice with `experts.expert_forward(rows, e)` (`experts.n_experts` is E), weight the outputs, and add them back into their tokens. Some experts may get no token.
# The check compares the output and the gradients (for x, the combine weights and every expert weight) with the library's reference `dispatch_naive`, and counts your calls to `expert_forward`.

# %%
def my_sorted_dispatch(x, routing, experts):
    # x (N, D); routing.indices, routing.weights (N, K); experts.expert_forward(rows (M, D), e) -> (M, D)
    raise NotImplementedError  # replace this line with your code


# %% tags=["solution"] jupyter={"source_hidden": true}
def sorted_dispatch_solution(x, routing, experts):
    k = routing.indices.shape[1]
    flat_experts = routing.indices.reshape(-1)  # (N*K,): expert of assignment n*K + slot
    order = torch.argsort(flat_experts, stable=True)  # (N*K,): assignments grouped by expert
    token_of = order // k  # (N*K,): the token each sorted assignment came from
    counts = torch.bincount(flat_experts, minlength=experts.n_experts).tolist()
    rows = x[token_of]  # (N*K, D), gathered once
    outputs, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            outputs.append(experts.expert_forward(rows[start : start + count], expert))
        start += count
    weighted = torch.cat(outputs) * routing.weights.reshape(-1)[order].unsqueeze(-1)  # (N*K, D)
    return torch.zeros_like(x).index_add(0, token_of, weighted)  # repeated tokens accumulate


# %%
check_sorted_dispatch(my_sorted_dispatch, reference=sorted_dispatch_solution)
