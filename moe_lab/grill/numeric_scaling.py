"""Numeric questions of notebook 07, GPU and scaling: the dispatch ladder's FLOPs, host
synchronizations on a GPU, the bytes one rank sends under expert parallelism, weight memory per
device, and the devices a token's experts live on.

Each generator draws a case from a seed and answers it with ``moe_lab`` itself: FLOPs counted by
``torch.utils.flop_counter`` on the library's ``MoELayer``, host synchronizations by
``moe_lab.profiling.audit_operators`` on it, bytes by ``moe_lab.budget.all_to_all_bytes`` on the
drawn routing, parameters by ``moe_lab.budget.count_parameters``, groups touched by
``moe_lab.group_routing.expected_groups_touched``. ``tests/test_grill_numeric.py`` redoes each by
hand. Importing ``moe_lab.grill.numeric`` registers them (it imports this module last).

Taught in: notebooks/07_gpu_and_scaling.ipynb; asked in notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import math
import random

import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_lab.budget import PRESETS, all_to_all_bytes, count_parameters, dtype_bytes, from_hf_config
from moe_lab.config import MoEConfig
from moe_lab.grill.numeric import NumericCase, _mixtral_like, _mixtral_params, _register, show
from moe_lab.group_routing import expected_groups_touched
from moe_lab.moe_layer import MoELayer
from moe_lab.profiling import audit_operators

# How each dispatch backend reads in a prompt (the ``dispatch=`` names of MoEConfig).
BACKEND_WORDS = {
    "naive": "a loop over the experts that finds each expert's tokens with"
    " `torch.where(indices == e)` (`naive`)",
    "sorted": "a sort of the assignments by expert on the device, then a Python loop over the"
    " experts, each on its contiguous slice of rows (`sorted`)",
    "grouped": "a sort of the assignments by expert on the device, then one grouped GEMM"
    " (`torch.nn.functional.grouped_mm`) per projection for all experts, given the group offsets"
    " as a device tensor (`grouped`)",
    "masked": "every expert on every token, each output multiplied by a dense (N, E) weight that"
    " is zero where the token did not choose the expert (`masked`)",
    "einsum": "GShard's one-hot (N, E, C) dispatch and combine einsums with capacity factor 1.25"
    " (`einsum`)",
}


def _layer(rng: random.Random, config: MoEConfig) -> MoELayer:
    """The library's layer, initialized from the case's seed without moving torch's global
    random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.randrange(2**31))
        return MoELayer(config)


def _tokens(rng: random.Random, n_tokens: int, d_model: int) -> torch.Tensor:
    return torch.randn(
        n_tokens, d_model, generator=torch.Generator().manual_seed(rng.randrange(2**31))
    )


# ----------------------------------------------------------------------------------------------
# The dispatch ladder and the GPU path
# ----------------------------------------------------------------------------------------------


@_register("ladder_flops")
def ladder_flops(rng: random.Random) -> NumericCase:
    backend = rng.choice(("sorted", "masked", "einsum"))
    n_tokens = rng.choice((64, 128, 256))
    d_model, d_expert = rng.choice((16, 32)), rng.choice((32, 64))
    n_experts = rng.choice((4, 8, 16))
    top_k = rng.choice((1, 2))
    cf = rng.choice((1.0, 1.25, 2.0)) if backend == "einsum" else None
    config = MoEConfig(
        d_model=d_model,
        d_expert=d_expert,
        n_experts=n_experts,
        top_k=top_k,
        dispatch=backend,
        capacity_factor=cf,
        validate_inputs=False,
    )
    layer = _layer(rng, config)
    x = _tokens(rng, n_tokens, d_model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    flops = counter.get_total_flops()
    value = flops / 1e6
    router = 2 * n_tokens * d_model * n_experts
    if backend == "sorted":
        how = "a sort by expert, then each expert on exactly its own rows (dropless)"
    elif backend == "masked":
        how = (
            "every expert on every token, the outputs weighted by a dense (N, E) weight that is"
            " zero where a token did not choose the expert"
        )
    else:
        how = (
            f"GShard's one-hot einsums with capacity factor {cf:g}: an (N, E, C) dispatch tensor"
            " scatters the tokens into an (E, C, D) buffer (`einsum('nec,nd->ecd')`), every"
            " expert runs on its C buffer rows, and an (N, E, C) combine tensor gathers them"
            " back (`einsum('nec,ecd->nd')`)"
        )
    if backend == "sorted":
        rows, part = n_tokens * top_k, "N·K rows"
    elif backend == "masked":
        rows, part = n_tokens * n_experts, "N·E rows: E/K times the sparse rungs"
    else:
        capacity = config.capacity(n_tokens)
        rows, part = n_experts * capacity, f"E·C rows, C = ceil(cf·N·K/E) = {capacity}"
    experts = 2 * rows * d_model * d_expert * 3
    einsums = flops - router - experts
    return NumericCase(
        prompt=(
            f"An MoE layer routes N = {n_tokens} tokens of width D = {d_model} top-{top_k} over"
            f" E = {n_experts} SwiGLU experts of width F = {d_expert} (three matrices: D × F,"
            f" D × F, F × D) with a bias-free D × E router. Its dispatch is {how}. How many"
            " forward FLOPs (in millions) do its matrix products cost? Count 2 FLOPs per"
            " multiply-add: the router on every token, each expert matrix on every row the"
            " expert computes, and any einsum; ignore softmax, activations and elementwise"
            " products."
        ),
        value=value,
        unit="MFLOPs",
        scale=1e6,
        working=(
            f"router 2·N·D·E = {show(router)}; experts 2·D·F·3 per row × {part} ="
            f" {show(experts)}"
            + (
                f"; the two einsums 2·(2·N·E·C·D) = {show(einsums)}, more than the experts"
                " whenever 2·N > 3·F: both grow as N² at a fixed capacity factor"
                if backend == "einsum"
                else ""
            )
            + f": **{value:.4g} MFLOPs**, counted by `FlopCounterMode` on `moe_lab.MoELayer`"
            f" (`dispatch={backend!r}`)."
        ),
        params={
            "backend": backend,
            "N": n_tokens,
            "D": d_model,
            "F": d_expert,
            "E": n_experts,
            "K": top_k,
            "cf": cf,
        },
        rel_tol=1e-3,
    )


@_register("host_syncs")
def host_syncs(rng: random.Random) -> NumericCase:
    backend = rng.choice(tuple(BACKEND_WORDS))
    n_experts = rng.choice((8, 16, 32, 64))
    n_layers = rng.choice((4, 12, 24, 32))
    validate = rng.choice((True, False))
    config = MoEConfig(
        d_model=8,
        d_expert=8,
        n_experts=n_experts,
        top_k=2,
        dispatch=backend,
        capacity_factor=1.25 if backend == "einsum" else None,
        validate_inputs=validate,
    )
    layer = _layer(rng, config)
    x = _tokens(rng, 64, 8)
    with torch.no_grad():
        layer(x)  # warm-up (the sorted backend fills its buffer pool)
        with audit_operators() as audit:
            layer(x)
    per_layer = audit.n_host_syncs
    value = n_layers * per_layer
    reasons = "; ".join(f"{count} × {why}" for why, count in audit.host_syncs.items()) or "none"
    check = (
        "first checks that its input is finite with `bool(torch.isfinite(x).all())`"
        if validate
        else "skips input checks (`validate_inputs=False`)"
    )
    return NumericCase(
        prompt=(
            f"A model has L = {n_layers} MoE layers, each routing top-2 over E = {n_experts}"
            f" experts. Each layer {check}, and dispatches by {BACKEND_WORDS[backend]}. On a"
            " GPU, how many host synchronizations (points where Python must wait for a value"
            " computed on the GPU before it can queue more work) do the MoE layers make in one"
            " forward pass? The router is a softmax and `torch.topk`, which need none."
        ),
        value=value,
        unit="host synchronizations",
        working=(
            f"per layer: {reasons}, so {per_layer}; × L = {n_layers}: **{value}**. A per-expert"
            " `torch.where` is a `nonzero`, whose output size the host must know (one per"
            " expert); a Python loop over experts needs the row counts on the host (one"
            " `tolist()`); grouped GEMM, the masked loop and the one-hot einsum have static or"
            " device-side shapes (none); `bool()` of a tensor is one more. Counted by"
            f" `moe_lab.profiling.audit_operators` on `MoELayer(dispatch={backend!r})`"
            " (notebook 07, sections 2 and 4)."
        ),
        params={"backend": backend, "E": n_experts, "L": n_layers, "validate": validate},
    )


# ----------------------------------------------------------------------------------------------
# Expert parallelism
# ----------------------------------------------------------------------------------------------


def _moe_spec(d_model: int, n_experts: int, top_k: int):
    config = {
        **PRESETS["Mixtral-8x7B"].config,
        "hidden_size": d_model,
        "num_local_experts": n_experts,
        "num_experts_per_tok": top_k,
    }
    return from_hf_config(config)


@_register("ep_rank_bytes")
def ep_rank_bytes(rng: random.Random) -> NumericCase:
    world = rng.choice((2, 4))
    n_experts = 2 * world
    tokens_per_rank = rng.choice((3, 4)) if world == 2 else 2
    n_tokens = world * tokens_per_rank
    top_k = 2
    d_model = rng.choice((1024, 2048, 4096, 7168))
    dtype = rng.choice(("bf16", "fp8"))
    per = dtype_bytes(dtype)
    backward = rng.choice((False, True))
    rank = rng.randrange(world)
    choices = [sorted(rng.sample(range(n_experts), top_k)) for _ in range(n_tokens)]
    moved = all_to_all_bytes(
        _moe_spec(d_model, n_experts, top_k), n_tokens, world, dtype,
        expert_indices=choices, backward=backward,
    )  # fmt: skip
    value = moved["by_rank"][rank]
    listing = "; ".join(
        f"rank {r}: "
        + ", ".join(
            str(tuple(choices[n])) for n in range(r * tokens_per_rank, (r + 1) * tokens_per_rank)
        )
        for r in range(world)
    )
    per_rank_experts = n_experts // world
    first, last = rank * per_rank_experts, (rank + 1) * per_rank_experts - 1
    own = range(rank * tokens_per_rank, (rank + 1) * tokens_per_rank)
    sent = sum(1 for n in own for e in choices[n] if e // per_rank_experts != rank)
    received = sum(
        1
        for n in range(n_tokens)
        if n not in own
        for e in choices[n]
        if e // per_rank_experts == rank
    )
    what = "one training step (forward and backward)" if backward else "one forward pass"
    return NumericCase(
        prompt=(
            f"Expert parallelism over W = {world} ranks: rank r holds experts"
            f" [{per_rank_experts}·r, {per_rank_experts}·r + {per_rank_experts - 1}] of E ="
            f" {n_experts} and {tokens_per_rank} tokens. Each token's two experts, by rank:"
            f" {listing}. Activations are D = {d_model:,} values in {dtype} ({per:g} byte(s)"
            f" each). How many bytes does rank {rank} send to other ranks in {what} of this MoE"
            " layer? In the dispatch all-to-all a rank sends its token copies whose expert lives"
            " elsewhere; in the combine it sends back the outputs of the copies other ranks sent"
            " to its experts; a copy that stays on its own rank moves nothing"
            + (
                "; the backward sends the gradients of both exchanges back the other way."
                if backward
                else "."
            )
        ),
        value=value,
        unit="bytes",
        working=(
            f"rank {rank} (experts {first}-{last}) sends {sent} remote cop(ies) in the dispatch"
            f" and returns {received} output(s) in the combine: {sent + received} rows of"
            f" {d_model:,} × {per:g} bytes"
            + (
                ", and the backward's reverse all-to-alls send as many rows again (the gradient"
                " of a row goes back to where the row came from)"
                if backward
                else ""
            )
            + f": **{show(value)} bytes**, as `moe_lab.budget.all_to_all_bytes(...,"
            ' expert_indices=...)["by_rank"]` counts it and as notebook 07\'s layer sends it.'
        ),
        params={
            "W": world,
            "E": n_experts,
            "D": d_model,
            "bytes": per,
            "rank": rank,
            "backward": backward,
            "choices": choices,
        },
    )


@_register("ep_memory_per_device")
def ep_memory_per_device(rng: random.Random) -> NumericCase:
    config, description = _mixtral_like(rng)
    n_experts = config["num_local_experts"]
    world = rng.choice([w for w in (2, 4, 8, 16, 32, 64) if w <= n_experts])
    dtype = rng.choice(("bf16", "fp8"))
    per = dtype_bytes(dtype)
    counts = count_parameters(from_hf_config(config))
    replicated = counts.total() - counts.routed_experts
    held = replicated + counts.routed_experts / world
    value = held * per / 1e9
    return NumericCase(
        prompt=(
            f"{description} It is served with expert parallelism over W = {world} devices: each"
            f" device holds E/W = {n_experts // world} of every block's experts and a full"
            " replica of everything else (attention, routers, norms, embedding, LM head). How"
            f" many GB (10⁹ bytes) of weights does each device hold in {dtype} ({per:g} byte(s)"
            " per parameter)?"
        ),
        value=value,
        unit="GB",
        scale=1e9,
        working=(
            f"replicated {replicated:,} + routed experts {counts.routed_experts:,} / {world} ="
            f" {held:,.0f} parameters × {per:g} = **{value:.4g} GB** per device, of"
            f" {counts.total() * per / 1e9:.4g} GB in all. Only the experts divide: the"
            " replicated part is a floor that more devices do not lower (notebook 07, memory per"
            " device)."
        ),
        params={**_mixtral_params(config), "W": world, "bytes": per},
        rel_tol=0.005,
    )


# ----------------------------------------------------------------------------------------------
# Group-limited routing
# ----------------------------------------------------------------------------------------------


@_register("groups_touched")
def groups_touched(rng: random.Random) -> NumericCase:
    n_group = rng.choice((4, 8, 16))
    n_experts = rng.choice([e for e in (64, 128, 160, 256) if e % n_group == 0])
    top_k = rng.choice((4, 6, 8))
    value = expected_groups_touched(n_experts, n_group, top_k)
    per_group = n_experts // n_group
    miss = math.comb(n_experts - per_group, top_k) / math.comb(n_experts, top_k)
    return NumericCase(
        prompt=(
            f"E = {n_experts} routed experts are spread over G = {n_group} nodes,"
            f" {per_group} contiguous experts each, and every token uses K = {top_k} experts."
            " Without a group limit, if a token's K experts were a uniformly random K-subset of"
            " the E, on how many distinct nodes would they live, on average? Two decimals."
        ),
        value=value,
        unit="nodes",
        working=(
            f"a node is missed when all K experts come from the other {n_experts - per_group}:"
            f" probability C({n_experts - per_group}, {top_k}) / C({n_experts}, {top_k}) ="
            f" {miss:.4f}; by linearity of expectation the mean is G·(1 − {miss:.4f}) ="
            f" **{value:.3f}** of {n_group} (`moe_lab.group_routing.expected_groups_touched`)."
            " DeepSeek's group-limited routing caps it at `topk_group` whatever the scores"
            " (DeepSeek-V3: 256 experts in 8 groups, K = 8, at most 4 nodes, against about 5.3"
            " for random choices)."
        ),
        params={"E": n_experts, "G": n_group, "K": top_k},
        abs_tol=0.01,
    )
