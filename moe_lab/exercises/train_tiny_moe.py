"""Exercises of notebook 04, training a tiny MoE: the total and active parameters of the course's
language model, and its training FLOPs per token.

Taught in: notebooks/04_train_tiny_moe.ipynb (exercises at the end).
"""

from __future__ import annotations

import torch

from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.exercises.core import call, exercise, expect_number, expect_pair
from moe_lab.model import PRESETS, TinyLM

NOTEBOOK = "04_train_tiny_moe"


def _configs() -> list[tuple[str, ModelConfig]]:
    """The three presets of notebook 04, and two variants that move every term of the count."""
    variant_moe = MoEConfig(d_model=32, d_expert=48, n_experts=4, top_k=1, activation="gelu")
    many_experts = MoEConfig(d_model=48, d_expert=32, n_experts=16, top_k=4)
    return [
        *PRESETS.items(),
        (
            "GELU, LayerNorm, top-1 of 4 experts in every other block",
            ModelConfig(
                d_model=32,
                n_layers=4,
                n_heads=2,
                max_seq_len=48,
                d_ff=96,
                activation="gelu",
                norm="layernorm",
                moe=variant_moe,
                moe_every=2,
            ),
        ),
        (
            "top-4 of 16 experts",
            ModelConfig(d_model=48, n_layers=2, n_heads=4, max_seq_len=32, moe=many_experts),
        ),
    ]


def _parts(config: ModelConfig) -> dict[str, int]:
    """Parameters by role, from the layout ``ModelConfig`` documents (for naming mistakes)."""
    d, moe = config.d_model, config.moe
    norm = d if config.norm == "rmsnorm" else 2 * d
    dense_ffn = (3 if config.activation == "swiglu" else 2) * d * config.d_ff
    parts = {
        "embedding": config.vocab_size * d,
        "position": config.max_seq_len * d,
        "norms": (2 * config.n_layers + 1) * norm,
        "attention": config.n_layers * 4 * d * d,
        "dense_ffn": (config.n_layers - config.n_moe_layers) * dense_ffn,
        "router": 0,
        "experts": 0,
        "inactive_experts": 0,
    }
    if moe is not None:
        one_expert = (3 if moe.activation == "swiglu" else 2) * d * moe.expert_width
        parts["router"] = config.n_moe_layers * d * moe.routed_experts
        parts["experts"] = config.n_moe_layers * moe.routed_experts * one_expert
        parts["inactive_experts"] = (
            config.n_moe_layers * (moe.routed_experts - moe.routed_top_k) * one_expert
        )
    return parts


@exercise(NOTEBOOK, against="TinyLM.parameter_counts(), counted on the modules")
def check_tiny_lm_parameters(attempt) -> int:
    """Check ``attempt(config) -> (total, active)`` for a ``ModelConfig`` of the course's TinyLM.

    total: every parameter of ``TinyLM(config)``; active: those one token uses (all but the
    routed experts it is not sent to), embeddings included. Compared with
    ``TinyLM(config).parameter_counts()``, which counts the modules themselves.
    """
    cases = _configs()
    for number, (name, config) in enumerate(cases, start=1):
        case = f"case {number} of {len(cases)} ({name})"
        result = expect_pair(call(attempt, config, case=case), "(total, active)", case)
        with torch.device("meta"):  # shapes only: no memory, no initialization cost
            counts = TinyLM(config).parameter_counts()
        parts = _parts(config)
        total = sum(v for k, v in parts.items() if k != "inactive_experts")
        assert total == counts.total, "the layout in _parts no longer matches TinyLM"
        moe = config.moe
        expect_number(
            result[0],
            counts.total,
            "the total",
            case,
            integer=True,
            mistakes={
                "the position embedding (max_seq_len x D) is left out": total - parts["position"],
                "the LM head is counted: it is tied to the token embedding, no parameters of its"
                " own": total + parts["embedding"],
                "the norms are left out (two per block and a final one; RMSNorm has D weights,"
                " LayerNorm D weights and D biases)": total - parts["norms"],
                "the routers are left out (a D x E gate per MoE block)": total - parts["router"],
            },
        )
        if moe is None:
            hint = "A dense model uses every parameter for every token."
        else:
            hint = (
                f"Each token uses {moe.routed_top_k} of the {moe.routed_experts} experts of each"
                " MoE block; everything else is used by every token."
            )
        expect_number(
            result[1],
            counts.active,
            "the active count",
            case,
            integer=True,
            mistakes={
                "the whole model is scaled by K/E: only the routed experts are sparse, attention,"
                " embeddings and routers serve every token": (
                    total * moe.routed_top_k // moe.routed_experts if moe else -1
                ),
                "the routers are left out of the active count: every token runs its router": (
                    counts.active - parts["router"] if moe else -1
                ),
                "the embeddings are left out: TinyLM's active count includes them (its"
                " non-embedding count does not)": counts.active
                - parts["embedding"]
                - parts["position"],
                "the active count is the total": total if moe else -1,
            },
            hint=hint,
        )
    return len(cases)


@exercise(NOTEBOOK, against="TinyLM.training_flops_per_token (moe_lab.budget's formula)")
def check_training_flops_per_token(attempt) -> int:
    """Check ``attempt(config, seq_len) -> flops``: training FLOPs per token of a TinyLM.

    3 x the forward FLOPs: 2 per active matrix weight (attention projections, the FFN or the K
    chosen experts, the router, the tied LM head; the embedding lookups and the norms multiply
    nothing), plus attention's scores and weighted sum, 4·D FLOPs per attended key per block,
    with (T + 1)/2 keys on average for a causal token at T = ``seq_len``. Compared with
    ``TinyLM(config).training_flops_per_token(seq_len)``.
    """
    cases = [(name, config, seq_len) for name, config in _configs() for seq_len in (64,)]
    cases.append(("tiny-moe at T=16", PRESETS["tiny-moe"], 16))
    for number, (name, config, seq_len) in enumerate(cases, start=1):
        case = f"case {number} of {len(cases)} ({name}, T={seq_len})"
        got = call(attempt, config, seq_len, case=case)
        with torch.device("meta"):
            model = TinyLM(config)
        expected = model.training_flops_per_token(seq_len)
        parts, d, layers = _parts(config), config.d_model, config.n_layers
        scores = 3 * layers * 4 * d * (seq_len + 1) / 2
        lookups = parts["embedding"] + parts["position"]
        expect_number(
            got,
            expected,
            "the training FLOP count per token",
            case,
            rel=1e-6,
            mistakes={
                "only the forward pass is counted: training is 3 x forward (the backward costs"
                " two products per forward product)": expected / 3,
                "attention's score term is left out: Q K^T and the weighted sum of V cost 4·D"
                " FLOPs per attended key per block": expected - scores,
                "a causal token is counted as attending all T keys: on average it attends"
                " (T + 1)/2": expected - scores + 3 * layers * 4 * d * seq_len,
                "the tied LM head is left out: it is a D x V product for every token": (
                    expected - 6 * parts["embedding"]
                ),
                "the embedding lookups are counted as products: a lookup reads a row and"
                " multiplies nothing": expected + 6 * lookups,
                "all experts are counted: FLOPs follow the K chosen experts": (
                    expected + 6 * parts["inactive_experts"]
                ),
            },
        )
    return len(cases)
