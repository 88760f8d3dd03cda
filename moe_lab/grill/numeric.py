"""Numeric questions: each generator draws a case from a seed and computes its answer with the
library, so the grill grades with the same code the notebooks teach.

    generator(rng) -> NumericCase(prompt, value, unit, working, params, tolerance)

``value`` always comes from ``moe_lab`` itself (``MoEConfig.capacity``, the capacity queue,
``balancing``, ``budget``, an ``MoELayer`` counted on the meta device); ``working`` shows the
arithmetic with this case's numbers; ``params`` holds the drawn numbers, so that
``tests/test_grill_numeric.py`` can redo every case by hand, independently of the library.

Taught in: notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from moe_lab.balancing import load_balancing_loss, max_violation, router_z_loss
from moe_lab.budget import (
    ALL_IN,
    all_to_all_bytes,
    count_parameters,
    dtype_bytes,
    expected_experts_touched,
    forward_flops_per_token,
    from_hf_config,
    kv_cache_bytes,
    weight_bytes,
)
from moe_lab.config import MoEConfig, expert_capacity
from moe_lab.dispatch import kept_assignments
from moe_lab.moe_layer import MoELayer
from moe_lab.routers import RoutingResult


@dataclass(frozen=True)
class NumericCase:
    """One drawn numeric question and its answer.

    Attributes:
        prompt: the question with this case's numbers, in Markdown; it states the unit.
        value: the answer in that unit, computed by the library.
        unit: what the number counts ("tokens", "billion parameters", "GB", ...).
        working: the worked solution with this case's numbers, in Markdown.
        params: the drawn numbers (for the independent hand computation in the tests).
        rel_tol, abs_tol: an answer x is right when ``math.isclose(x, value, rel_tol, abs_tol)``;
            both 0 means exact (counts of tokens or slots).
        scale: how many base units one unit of ``value`` is (1e9 for "billion parameters" or
            "GB"), so that an answer written "46.7B" or "93 GB" is read in the right unit.
    """

    prompt: str
    value: float
    unit: str
    working: str
    params: dict[str, Any] = field(default_factory=dict)
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    scale: float = 1.0

    def accepts(self, number: float) -> bool:
        return math.isclose(number, self.value, rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    @property
    def tolerance_text(self) -> str:
        if self.rel_tol < 1e-4 and self.abs_tol == 0:
            return "exactly"
        if self.rel_tol > 0:
            return f"within {self.rel_tol:.1%}"
        return f"within ±{self.abs_tol:g}"


Generator = Callable[[random.Random], NumericCase]
GENERATORS: dict[str, Generator] = {}


def _register(name: str) -> Callable[[Generator], Generator]:
    def register(function: Generator) -> Generator:
        GENERATORS[name] = function
        return function

    return register


def generate(name: str, seed: int) -> NumericCase:
    """The case generator ``name`` draws from ``seed`` (same seed, same case)."""
    if name not in GENERATORS:
        raise ValueError(
            f"numeric generator {name!r} is unknown: choose one of {sorted(GENERATORS)}"
        )
    return GENERATORS[name](random.Random(seed))


def show(value: float) -> str:
    """A number as the grill prints it: integers with thousands separators, else 4 digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


# ----------------------------------------------------------------------------------------------
# Balancing and capacity
# ----------------------------------------------------------------------------------------------


@_register("capacity")
def capacity(rng: random.Random) -> NumericCase:
    n_tokens = rng.choice((512, 1024, 2048, 4096, 8192))
    n_experts = rng.choice((8, 16, 32, 64, 128))
    top_k = rng.choice([k for k in (1, 2, 4, 6, 8) if k <= n_experts // 2])
    cf = rng.choice((1.0, 1.25, 1.5, 2.0))
    config = MoEConfig(d_model=1, d_expert=1, n_experts=n_experts, top_k=top_k, capacity_factor=cf)
    value = config.capacity(n_tokens)
    return NumericCase(
        prompt=(
            f"A batch of N = {n_tokens:,} tokens is routed top-{top_k} over E = {n_experts}"
            f" experts with capacity factor {cf:g}. How many assignments can one expert accept"
            " (its capacity C)?"
        ),
        value=value,
        unit="assignments",
        working=(
            f"C = ceil(cf·N·K/E) = ceil({cf:g}·{n_tokens:,}·{top_k}/{n_experts})"
            f" = ceil({cf * n_tokens * top_k / n_experts:g}) = **{value:,}** (Switch Transformer"
            " eq. (3), generalized to K choices as in GShard: N·K/E is the mean load, cf the"
            f" headroom). Nothing can be dropped once cf ≥ E/K = {n_experts / top_k:g}."
        ),
        params={"N": n_tokens, "E": n_experts, "K": top_k, "cf": cf},
    )


def _weighted_choice_without_replacement(
    rng: random.Random, weights: list[float], k: int
) -> list[int]:
    remaining = list(range(len(weights)))
    chosen = []
    for _ in range(k):
        pick = rng.choices(remaining, [weights[i] for i in remaining])[0]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


@_register("dropped_tokens")
def dropped_tokens(rng: random.Random) -> NumericCase:
    n_experts = 4
    top_k = rng.choice((1, 2))
    n_tokens = rng.choice((8, 10, 12))
    cf = rng.choice((0.5, 0.75, 1.0))
    popularity = [0.5, 0.25, 0.15, 0.10]
    rng.shuffle(popularity)
    choices = [
        _weighted_choice_without_replacement(rng, popularity, top_k) for _ in range(n_tokens)
    ]
    indices = torch.tensor(choices)  # (N, K)
    routing = RoutingResult(
        indices=indices,
        weights=torch.ones(n_tokens, top_k),
        probs=torch.full((n_tokens, n_experts), 1 / n_experts),
        logits=torch.zeros(n_tokens, n_experts),
    )
    capacity_ = expert_capacity(n_tokens, n_experts, top_k, cf)
    _, dropped = kept_assignments(routing, capacity_, "position")  # (N, K)
    lost = dropped.all(dim=1)  # (N,): every assignment of the token dropped
    value = int(lost.sum())
    if top_k == 1:
        listing = ", ".join(str(row[0]) for row in choices)
        what = "the expert each token chose, in token order"
        ask = "How many tokens are dropped (get zero expert output)?"
    else:
        listing = ", ".join(f"({a}, {b})" for a, b in choices)
        what = "each token's (first, second) choice, in token order"
        ask = (
            "How many tokens lose *both* of their experts, and so get zero expert output"
            " (they continue only through the residual connection)?"
        )
    loads = torch.bincount(indices.flatten(), minlength=n_experts).tolist()
    return NumericCase(
        prompt=(
            f"N = {n_tokens} tokens, E = {n_experts} experts, top-{top_k}, capacity factor"
            f" {cf:g}. {what[0].upper() + what[1:]}: {listing}. Experts accept assignments by"
            " position priority (GShard, Switch): every token's first choice in token order,"
            f" then every second choice. {ask}"
        ),
        value=value,
        unit="tokens",
        working=(
            f"C = ceil({cf:g}·{n_tokens}·{top_k}/{n_experts}) = {capacity_}. Loads per expert:"
            f" {loads}. Filling each expert's {capacity_} slots in priority order drops"
            f" {int(dropped.sum())} assignment(s); the tokens left with no expert are"
            f" {torch.nonzero(lost).flatten().tolist()}: **{value}**."
        ),
        params={"N": n_tokens, "E": n_experts, "K": top_k, "cf": cf, "choices": choices},
    )


def _composition(rng: random.Random, total: int, parts: int, low: int, high: int) -> list[int]:
    """``parts`` integers in [low, high] that sum to ``total`` (rejection sampling)."""
    while True:
        values = [rng.randint(low, high) for _ in range(parts - 1)]
        last = total - sum(values)
        if low <= last <= high:
            return [*values, last]


@_register("aux_loss")
def aux_loss(rng: random.Random) -> NumericCase:
    n_experts, n_tokens = 4, 8
    top_k = rng.choice((1, 2))
    counts = _composition(rng, n_tokens * top_k, n_experts, 0, n_tokens)
    percent = _composition(rng, 100, n_experts, 5, 70)
    mean_probs = [p / 100 for p in percent]
    indices = torch.tensor([e for e, count in enumerate(counts) for _ in range(count)]).view(
        n_tokens, top_k
    )  # (N, K)
    probs = torch.tensor(mean_probs, dtype=torch.float64).expand(n_tokens, n_experts)  # (N, E)
    value = float(load_balancing_loss(probs, indices))
    fractions = [c / (n_tokens * top_k) for c in counts]
    terms = " + ".join(f"{f:g}·{p:g}" for f, p in zip(fractions, mean_probs, strict=True))
    return NumericCase(
        prompt=(
            f"N = {n_tokens} tokens are routed top-{top_k} over E = {n_experts} experts. The"
            f" experts received {counts} of the N·K = {n_tokens * top_k} assignments, and the"
            f" router's mean probabilities over the batch were P = {mean_probs}. What is the"
            " unweighted Switch load-balancing loss L = E·Σᵢ fᵢ·Pᵢ, with fᵢ the fraction of the"
            " N·K assignments that went to expert i (moe_lab's scaling: uniform routing gives"
            " 1)? Three decimals."
        ),
        value=value,
        unit="",
        working=(
            f"f = counts / {n_tokens * top_k} = {[round(f, 4) for f in fractions]};"
            f" L = {n_experts}·({terms}) = **{value:.4f}**. Uniform routing would give exactly 1;"
            " Hugging Face's Mixtral code normalizes f over N tokens instead, which multiplies"
            " the value by K."
        ),
        params={"E": n_experts, "N": n_tokens, "K": top_k, "counts": counts, "P": mean_probs},
        abs_tol=0.0015,
    )


def _loads(rng: random.Random, n: int) -> list[int]:
    return [rng.randint(10, 60) for _ in range(n)]


@_register("max_violation")
def max_violation_case(rng: random.Random) -> NumericCase:
    loads = _loads(rng, 8)
    value = max_violation(torch.tensor(loads))
    mean = sum(loads) / len(loads)
    return NumericCase(
        prompt=(
            f"In one training step the 8 experts of an MoE layer received these numbers of"
            f" assignments: {loads}. What is the layer's MaxVio = (max load − mean load) / mean"
            " load (Wang et al. 2024, eq. (5))? Two decimals."
        ),
        value=value,
        unit="",
        working=(
            f"mean = {sum(loads)}/8 = {mean:g}; MaxVio = ({max(loads)} − {mean:g})/{mean:g} ="
            f" **{value:.3f}**. 0 means perfectly balanced."
        ),
        params={"loads": loads},
        abs_tol=0.005,
    )


# ----------------------------------------------------------------------------------------------
# Training and collapse
# ----------------------------------------------------------------------------------------------


@_register("z_loss")
def z_loss(rng: random.Random) -> NumericCase:
    logits = [[float(rng.randint(-3, 4)) for _ in range(4)] for _ in range(2)]
    value = float(router_z_loss(torch.tensor(logits, dtype=torch.float64)))
    lse = [math.log(sum(math.exp(z) for z in row)) for row in logits]
    return NumericCase(
        prompt=(
            f"Two tokens' router logits over 4 experts are {logits[0]} and {logits[1]}. What is"
            " the router z-loss of ST-MoE (Zoph et al. 2022, eq. (5)): the mean over tokens of"
            " (log Σᵢ e^{zᵢ})²? Three significant digits."
        ),
        value=value,
        unit="",
        working=(
            f"logsumexp per token: {lse[0]:.4f} and {lse[1]:.4f}; the mean of their squares is"
            f" **{value:.4f}**. Adding the same constant to every logit leaves the softmax (and"
            " the routing) unchanged but changes this loss: that is how it pins the logits'"
            " level."
        ),
        params={"logits": logits},
        rel_tol=0.005,
    )


@_register("collapsed_aux_loss")
def collapsed_aux_loss(rng: random.Random) -> NumericCase:
    n_experts = rng.choice((8, 16, 32, 64))
    survivors = rng.choice((1, 2, 4))
    n_tokens = 16 * survivors
    indices = (torch.arange(n_tokens) % survivors).view(n_tokens, 1)  # (N, 1)
    probs = torch.zeros(n_tokens, n_experts, dtype=torch.float64)
    probs[:, :survivors] = 1 / survivors  # (N, E)
    value = float(load_balancing_loss(probs, indices))
    return NumericCase(
        prompt=(
            f"A top-1 router over E = {n_experts} experts has collapsed: every token now goes to"
            f" one of the same {survivors} expert(s), which share the tokens evenly, and every"
            f" token's router puts probability 1/{survivors} on each of those {survivors} and 0"
            " elsewhere. What does the unweighted Switch auxiliary loss E·Σᵢ fᵢ·Pᵢ read?"
            " (Balanced routing reads 1.)"
        ),
        value=value,
        unit="",
        working=(
            f"fᵢ = Pᵢ = 1/{survivors} for the {survivors} surviving expert(s), 0 for the rest:"
            f" L = {n_experts}·{survivors}·(1/{survivors})² = E/m = **{value:g}**. Full collapse"
            " onto one expert gives the maximum, E."
        ),
        params={"E": n_experts, "m": survivors},
        rel_tol=1e-6,
    )


# ----------------------------------------------------------------------------------------------
# Budgets and serving
# ----------------------------------------------------------------------------------------------


def _mixtral_like(rng: random.Random) -> tuple[dict[str, Any], str]:
    """A Mixtral-style config dict (Hugging Face field names) and its description."""
    d_model = rng.choice((2048, 3072, 4096, 5120))
    head_dim = 128
    n_heads = d_model // head_dim
    n_kv = rng.choice((4, 8))
    n_layers = rng.choice((16, 24, 32, 40))
    n_experts = rng.choice((8, 16, 32, 64))
    top_k = rng.choice([k for k in (1, 2, 4, 8) if k <= n_experts // 4])
    d_expert = rng.choice((1024, 2048, 4096, 8192, 14336))
    vocab = rng.choice((32000, 65536, 128256))
    config = {
        "model_type": "mixtral",
        "hidden_size": d_model,
        "intermediate_size": d_expert,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "num_local_experts": n_experts,
        "num_experts_per_tok": top_k,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    description = (
        f"A Mixtral-style decoder: D = {d_model}, L = {n_layers} blocks; attention with"
        f" {n_heads} query heads and {n_kv} key/value heads of width 128 (q and o are D × {d_model},"
        f" k and v D × {n_kv * head_dim}, no biases); in every block E = {n_experts} SwiGLU experts"
        f" (three D × F matrices each) of width F = {d_expert:,}, top-{top_k} routing, a router of"
        f" E × D weights; two RMSNorms of D weights per block and one final; a vocabulary of"
        f" V = {vocab:,} with an untied embedding and LM head."
    )
    return config, description


def _mixtral_params(config: dict[str, Any]) -> dict[str, int]:
    keys = {
        "D": "hidden_size",
        "F": "intermediate_size",
        "L": "num_hidden_layers",
        "H": "num_attention_heads",
        "KV": "num_key_value_heads",
        "E": "num_local_experts",
        "K": "num_experts_per_tok",
        "V": "vocab_size",
    }
    return {short: config[long] for short, long in keys.items()}


def _mixtral_working(p: dict[str, int], experts_used: str) -> str:
    D, F_, L, H, KV, E, K, V = (p[k] for k in ("D", "F", "L", "H", "KV", "E", "K", "V"))
    attention = 2 * D * H * 128 + 2 * D * KV * 128
    n_experts = E if experts_used == "E" else K
    per_block = attention + n_experts * 3 * D * F_ + E * D + 2 * D
    return (
        f"per block: attention 2·D·{H * 128} + 2·D·{KV * 128} = {attention:,}; {experts_used} ="
        f" {n_experts} experts × 3·D·F = {n_experts * 3 * D * F_:,}; router E·D = {E * D:,};"
        f" norms 2·D = {2 * D:,}; together {per_block:,}, times L = {L}:"
        f" {L * per_block:,}; plus the final norm D and the embedding and head 2·V·D ="
        f" {2 * V * D:,}"
    )


@_register("model_total")
def model_total(rng: random.Random) -> NumericCase:
    config, description = _mixtral_like(rng)
    counts = count_parameters(from_hf_config(config))
    value = counts.total() / 1e9
    return NumericCase(
        prompt=f"{description} How many parameters does it hold in total, in billions?",
        value=value,
        unit="billion parameters",
        scale=1e9,
        working=(
            f"{_mixtral_working(_mixtral_params(config), 'E')}: **{value:.4g}B**. Every expert"
            " counts toward the total; attention, embeddings and norms exist once."
        ),
        params=_mixtral_params(config),
        rel_tol=0.005,
    )


@_register("model_active")
def model_active(rng: random.Random) -> NumericCase:
    config, description = _mixtral_like(rng)
    counts = count_parameters(from_hf_config(config))
    value = counts.active(ALL_IN) / 1e9
    return NumericCase(
        prompt=(
            f"{description} How many parameters does one token use (active parameters), in"
            " billions, counting the embedding and the LM head as Mistral does?"
        ),
        value=value,
        unit="billion parameters",
        scale=1e9,
        working=(
            f"{_mixtral_working(_mixtral_params(config), 'K')}: **{value:.4g}B**. Only K of the E"
            " experts are active; the router scores all E, so all of it counts."
        ),
        params=_mixtral_params(config),
        rel_tol=0.005,
    )


@_register("weight_memory")
def weight_memory(rng: random.Random) -> NumericCase:
    config, description = _mixtral_like(rng)
    dtype = rng.choice(("bf16", "fp8", "int4"))
    value = weight_bytes(from_hf_config(config), dtype) / 1e9
    per = dtype_bytes(dtype)
    total = count_parameters(from_hf_config(config)).total()
    return NumericCase(
        prompt=(
            f"{description} How many GB (10⁹ bytes) do its weights take in {dtype}"
            f" ({per:g} bytes per parameter), ignoring quantization scales?"
        ),
        value=value,
        unit="GB",
        scale=1e9,
        working=(
            f"every expert must be resident: total parameters {total:,} × {per:g} bytes ="
            f" **{value:.4g} GB**. Memory follows the total, not the active count."
        ),
        params={**_mixtral_params(config), "bytes": per},
        rel_tol=0.005,
    )


@_register("flops_per_token")
def flops_per_token(rng: random.Random) -> NumericCase:
    config, description = _mixtral_like(rng)
    context = rng.choice((1, 2048, 8192, 32768))
    flops = forward_flops_per_token(from_hf_config(config), context)
    value = flops.total / 1e9
    return NumericCase(
        prompt=(
            f"{description} How many forward FLOPs does one token cost, in GFLOPs, when it"
            f" attends {context:,} key(s) in every block? Count 2 FLOPs per weight of every"
            " matrix the token multiplies by (attention projections, its K experts, the router,"
            " the LM head; the embedding is a lookup) plus the attention scores: 2·H·(hd + hd)"
            " per attended key per block (QKᵀ and the weighted sum of V); ignore norms and"
            " softmax."
        ),
        value=value,
        unit="GFLOPs",
        scale=1e9,
        working=(
            f"projections and experts: {flops.attention_proj / 1e9:.4g} + "
            f"{flops.routed_experts / 1e9:.4g} + router {flops.router / 1e9:.3g} + LM head"
            f" {flops.lm_head / 1e9:.4g} GFLOPs; attention scores"
            f" {flops.attention_scores / 1e9:.4g} GFLOPs: **{value:.4g} GFLOPs**. The score term"
            " has no parameters and grows with the context."
        ),
        params={**_mixtral_params(config), "context": context},
        rel_tol=0.005,
    )


@_register("kv_cache")
def kv_cache(rng: random.Random) -> NumericCase:
    config, _ = _mixtral_like(rng)
    head_dim = rng.choice((64, 128))
    config = {**config, "head_dim": head_dim}
    n_layers, n_kv = config["num_hidden_layers"], config["num_key_value_heads"]
    context = rng.choice((4096, 8192, 32768, 131072))
    batch = rng.choice((1, 8, 32))
    dtype = rng.choice(("bf16", "fp8"))
    value = kv_cache_bytes(from_hf_config(config), context, batch, dtype) / 1e9
    per = dtype_bytes(dtype)
    return NumericCase(
        prompt=(
            f"A decoder with L = {n_layers} blocks of grouped-query attention, {n_kv} key/value"
            f" heads of width {head_dim}, serves a batch of {batch} sequence(s) of {context:,}"
            f" tokens. How many GB (10⁹ bytes) does its KV cache take in {dtype}?"
        ),
        value=value,
        unit="GB",
        scale=1e9,
        working=(
            f"2 (K and V) × L × KV heads × head width × tokens × batch × bytes = 2·{n_layers}·"
            f"{n_kv}·{head_dim}·{context:,}·{batch}·{per:g} = **{value:.4g} GB**. Experts do not"
            " enter: the cache is the attention's."
        ),
        params={
            "L": n_layers,
            "KV": n_kv,
            "hd": head_dim,
            "T": context,
            "B": batch,
            "bytes": per,
        },
        rel_tol=0.005,
    )


@_register("experts_touched")
def experts_touched(rng: random.Random) -> NumericCase:
    n_experts = rng.choice((8, 16, 32, 64, 128, 256))
    top_k = rng.choice([k for k in (1, 2, 4, 6, 8) if k <= n_experts // 2])
    batch = rng.choice((1, 2, 4, 8, 16, 32, 64))
    value = expected_experts_touched(n_experts, top_k, batch)
    return NumericCase(
        prompt=(
            f"An MoE layer has E = {n_experts} experts and routes each token to K = {top_k}. A"
            f" decoding step carries B = {batch} token(s) (one per sequence). Assuming each token"
            " picks its K experts uniformly at random, how many distinct experts does the step"
            " read, in expectation?"
        ),
        value=value,
        unit="experts",
        working=(
            f"a token misses a given expert with probability 1 − K/E = {1 - top_k / n_experts:g};"
            f" all B tokens miss it with probability (1 − K/E)^B, so the expected number touched is"
            f" E·(1 − (1 − K/E)^B) = **{value:.4g}** of {n_experts}. Decoding bytes move from the"
            " active toward the total parameters as B grows."
        ),
        params={"E": n_experts, "K": top_k, "B": batch},
        rel_tol=0.01,
    )


def _moe_layer_config(rng: random.Random) -> MoEConfig:
    d_model = rng.choice((64, 128, 256, 512))
    segments = rng.choice((1, 1, 2, 4))
    return MoEConfig(
        d_model=d_model,
        d_expert=d_model * rng.choice((1, 2, 4)),
        n_experts=(n_experts := rng.choice((4, 8, 16, 32))),
        top_k=rng.choice([k for k in (1, 2, 4) if k <= n_experts]),
        activation=rng.choice(("swiglu", "gelu")),
        n_shared_experts=rng.choice((0, 0, 1, 2)),
        expert_segments=segments,
    )


def _moe_layer_prompt(config: MoEConfig) -> str:
    return (
        f"`MoELayer(MoEConfig(d_model={config.d_model}, d_expert={config.d_expert},"
        f" n_experts={config.n_experts}, top_k={config.top_k},"
        f" activation={config.activation!r}, n_shared_experts={config.n_shared_experts},"
        f" expert_segments={config.expert_segments}))`. Reminders: with segmentation m the layer"
        " builds E·m experts of width F/m and routes each token to K·m of them; a SwiGLU expert"
        " has three matrices (D × F, D × F, F × D), a GELU expert two; each shared expert has the"
        " routed experts' width F/m and runs on every token; the router is a bias-free D × E·m"
        " matrix; nothing has biases."
    )


def _meta_layer(config: MoEConfig) -> MoELayer:
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        return MoELayer(config)


def _moe_layer_params(config: MoEConfig) -> dict[str, Any]:
    return {
        "D": config.d_model,
        "F": config.d_expert,
        "E": config.n_experts,
        "K": config.top_k,
        "matrices": 3 if config.activation == "swiglu" else 2,
        "shared": config.n_shared_experts,
        "m": config.expert_segments,
    }


@_register("moe_layer_params")
def moe_layer_params(rng: random.Random) -> NumericCase:
    config = _moe_layer_config(rng)
    layer = _meta_layer(config)
    value = sum(p.numel() for p in layer.parameters())
    routed = layer.experts
    shared = (
        sum(p.numel() for p in layer.shared_experts.parameters()) if config.n_shared_experts else 0
    )
    return NumericCase(
        prompt=f"How many parameters does this layer hold? {_moe_layer_prompt(config)}",
        value=value,
        unit="parameters",
        working=(
            f"{config.routed_experts} routed experts × {sum(p[0].numel() for p in routed.parameters()):,}"
            f" + shared {shared:,} + router {layer.router.gate.weight.numel():,} = **{value:,}**"
            " (counted on the instantiated layer)."
        ),
        params=_moe_layer_params(config),
        rel_tol=0.005,
    )


@_register("moe_layer_active")
def moe_layer_active(rng: random.Random) -> NumericCase:
    config = _moe_layer_config(rng)
    layer = _meta_layer(config)
    per_expert = sum(p[0].numel() for p in layer.experts.parameters())
    shared = (
        sum(p.numel() for p in layer.shared_experts.parameters()) if config.n_shared_experts else 0
    )
    router = layer.router.gate.weight.numel()
    value = config.routed_top_k * per_expert + shared + router
    return NumericCase(
        prompt=(
            "How many of this layer's parameters does one token use (its active parameters,"
            f" router included)? {_moe_layer_prompt(config)}"
        ),
        value=value,
        unit="parameters",
        working=(
            f"K·m = {config.routed_top_k} experts × {per_expert:,} + shared {shared:,} + router"
            f" {router:,} (it scores every expert) = **{value:,}**. Fine-grained segmentation"
            " keeps the active expert parameters the same and only grows the router."
        ),
        params=_moe_layer_params(config),
        rel_tol=0.005,
    )


# ----------------------------------------------------------------------------------------------
# Scaling and parallelism
# ----------------------------------------------------------------------------------------------


@_register("all_to_all")
def all_to_all(rng: random.Random) -> NumericCase:
    config, _ = _mixtral_like(rng)
    d_model, top_k = config["hidden_size"], config["num_experts_per_tok"]
    n_tokens = rng.choice((4096, 8192, 16384))
    world = rng.choice((8, 16, 32, 64))
    dtype = rng.choice(("bf16", "fp8"))
    per = dtype_bytes(dtype)
    moved = all_to_all_bytes(from_hf_config(config), n_tokens, world, dtype)
    value = moved["total"] / 1e6
    return NumericCase(
        prompt=(
            f"Expert parallelism over W = {world} ranks, experts and tokens spread evenly. One"
            f" step routes N = {n_tokens:,} tokens (all ranks together) top-{top_k} through an"
            f" MoE layer of width D = {d_model}, activations in {dtype}. Under uniform routing,"
            " how many MB (10⁶ bytes) do the dispatch and the combine all-to-all move together"
            " for this one layer in the forward pass, over all ranks (a copy that stays on its"
            " own rank moves nothing)?"
        ),
        value=value,
        unit="MB",
        scale=1e6,
        working=(
            f"each of the N·K copies leaves its rank with probability (W − 1)/W; dispatch sends"
            f" D values per copy and combine sends them back: 2·N·K·D·(W − 1)/W·{per:g} bytes ="
            f" 2·{n_tokens:,}·{top_k}·{d_model}·{world - 1}/{world}·{per:g} = **{value:.4g} MB**,"
            f" {moved['per_rank'] / 1e6:.4g} MB per rank, per MoE layer and forward pass. The"
            " backward's reverse all-to-alls move as much again in a training step."
        ),
        params={"N": n_tokens, "K": top_k, "D": d_model, "W": world, "bytes": per},
        rel_tol=0.005,
    )


@_register("useful_fraction")
def useful_fraction(rng: random.Random) -> NumericCase:
    loads = _loads(rng, 8)
    value = 1 / (1 + max_violation(torch.tensor(loads)))
    return NumericCase(
        prompt=(
            "Expert parallelism: each of 8 ranks hosts one expert, and the step's assignments"
            f" per rank are {loads}. Every rank waits for the busiest before the combine"
            " all-to-all. What fraction of the ranks' expert time is useful work? Two decimals."
        ),
        value=value,
        unit="",
        working=(
            f"useful fraction = mean load / max load = {sum(loads) / 8:g}/{max(loads)} ="
            f" 1/(1 + MaxVio) = **{value:.3f}**; the rest is ranks idling at the barrier."
        ),
        params={"loads": loads},
        abs_tol=0.005,
    )


# Notebook 07's generators (the dispatch ladder, host syncs, expert parallelism, group-limited
# routing) live in their own module; importing it here registers them with every import of this
# one.
# Notebook 05's (specialization and collapse) live in numeric_specialization, likewise.
from moe_lab.grill import (  # noqa: E402  (importing registers them)
    numeric_scaling,  # noqa: F401
    numeric_specialization,  # noqa: F401
)
