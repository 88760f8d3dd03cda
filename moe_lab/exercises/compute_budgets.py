"""Exercises of notebook 06, compute budgets: a Mixtral-style model's total and active parameters,
the experts a batch touches, and the bytes expert parallelism sends.

Taught in: notebooks/06_compute_budgets.ipynb (exercises at the end).
"""

from __future__ import annotations

from moe_lab.budget import (
    PRESETS,
    all_to_all_bytes,
    count_parameters,
    expected_experts_touched,
    from_hf_config,
)
from moe_lab.exercises.core import call, exercise, expect_number, expect_pair

NOTEBOOK = "06_compute_budgets"


def _mixtral_configs() -> list[tuple[str, dict]]:
    """Mixtral-8x7B and -8x22B as published, and variants that move every term."""
    base = PRESETS["Mixtral-8x7B"].config
    return [
        ("Mixtral-8x7B", dict(base)),
        ("Mixtral-8x22B", dict(PRESETS["Mixtral-8x22B"].config)),
        (
            "a small variant: D=512, 6 blocks, 8 query and 2 key/value heads, top-1 of 4",
            {
                **base,
                "hidden_size": 512,
                "num_hidden_layers": 6,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "intermediate_size": 1536,
                "num_local_experts": 4,
                "num_experts_per_tok": 1,
                "vocab_size": 1000,
            },
        ),
        (
            "the small variant with tied embeddings and head_dim=32 (4 x 32 != D)",
            {
                **base,
                "hidden_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "head_dim": 32,
                "intermediate_size": 512,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "vocab_size": 500,
                "tie_word_embeddings": True,
            },
        ),
    ]


@exercise(NOTEBOOK, against="moe_lab.budget.count_parameters(from_hf_config(config))")
def check_mixtral_parameters(attempt) -> int:
    """Check ``attempt(config) -> (total, active)`` for a Mixtral-family ``config.json`` dict.

    Fields: ``hidden_size`` D, ``num_hidden_layers`` L, ``num_attention_heads`` H,
    ``num_key_value_heads`` KV, ``head_dim`` (absent: D / H), ``intermediate_size`` F,
    ``num_local_experts`` E, ``num_experts_per_tok`` K, ``vocab_size`` V,
    ``tie_word_embeddings`` (absent: False). Active counts the embedding, as Mistral does.
    Compared with ``moe_lab.budget``'s calculator, which reproduces Mistral's 46.7B / 12.9B.
    """
    cases = _mixtral_configs()
    for number, (name, config) in enumerate(cases, start=1):
        case = f"case {number} of {len(cases)} ({name})"
        result = expect_pair(call(attempt, dict(config), case=case), "(total, active)", case)
        counts = count_parameters(from_hf_config(config))
        d, layers = config["hidden_size"], config["num_hidden_layers"]
        heads, e, k = (
            config["num_attention_heads"],
            config["num_local_experts"],
            config["num_experts_per_tok"],
        )
        head_dim = config.get("head_dim") or d // heads
        kv = config["num_key_value_heads"] * head_dim
        one_expert_layers = layers * 3 * d * config["intermediate_size"]  # one expert per block
        shared = counts.total() - counts.routed_experts - counts.router
        full_kv = layers * 2 * d * (heads * head_dim - kv)  # k and v as wide as q
        total = counts.total()
        expect_number(
            result[0],
            total,
            "the total",
            case,
            integer=True,
            mistakes={
                "the whole model is copied E times ('8 x 7B = 56B'): only the FFN is replicated;"
                " attention, embeddings, head and norms are shared by the experts": e
                * (shared + one_expert_layers + counts.router // e),
                "k and v are counted as wide as q: with grouped-query attention they are"
                " num_key_value_heads x head_dim wide": total + full_kv,
                "the routers are left out (an E x D gate per block)": total - counts.router,
                "the norms are left out (two RMSNorms of D per block and a final one)": (
                    total - counts.norms
                ),
                "the LM head is counted separately although tie_word_embeddings is true": (
                    total + counts.embedding if counts.tied_embeddings else -1
                ),
                "head_dim is taken as D / H although the config sets head_dim": (
                    total
                    + layers
                    * (2 * d * heads + 2 * d * config["num_key_value_heads"])
                    * (d // heads - head_dim)
                    if "head_dim" in config
                    else -1
                ),
                "the LM head is left out: Mixtral's is a separate V x D matrix": (
                    total - counts.lm_head if counts.lm_head else -1
                ),
            },
        )
        active = counts.active()
        expect_number(
            result[1],
            active,
            "the active count",
            case,
            integer=True,
            mistakes={
                "the whole model is scaled by K/E: only the experts are sparse": total * k // e,
                "the embedding is left out: that is the 'head, no embedding' convention (OpenAI,"
                " DeepSeek); Mistral's 12.9B counts it": (
                    active - counts.embedding if not counts.tied_embeddings else -1
                ),
                "the routers are left out: every token runs its block's router": active
                - counts.router,
            },
            hint=f"Active: everything but the {e - k} experts per block a token does not use.",
        )
    return len(cases)


@exercise(NOTEBOOK, against="moe_lab.budget.expected_experts_touched")
def check_experts_touched(attempt) -> int:
    """Check ``attempt(n_experts, top_k, n_tokens) -> float``: the expected number of distinct
    experts B tokens use, each choosing K distinct experts of E uniformly at random.

    Compared with ``moe_lab.budget.expected_experts_touched``, ``E·(1 - (1 - K/E)^B)``.
    """
    settings = [
        (8, 2, 1),
        (16, 2, 16),
        (256, 8, 64),
        (64, 6, 16),
        (8, 8, 3),
        (4, 1, 0),
        (60, 4, 1000),
    ]
    for number, (e, k, b) in enumerate(settings, start=1):
        case = f"case {number} of {len(settings)} (E={e}, K={k}, B={b})"
        got = call(attempt, e, k, b, case=case)
        expect_number(
            got,
            expected_experts_touched(e, k, b),
            "the expected number of experts touched",
            case,
            rel=1e-9,
            mistakes={
                "no two tokens are assumed to share an expert (min(E, K·B)): they do, often": min(
                    e, k * b
                ),
                "the K·B choices are treated as independent draws with replacement"
                " (E·(1 - (1 - 1/E)^(K·B))): a token's K experts are distinct, so a token misses"
                " a given expert with probability 1 - K/E": e * (1 - (1 - 1 / e) ** (k * b)),
                "the probability that one token misses an expert is taken as K/E: it is 1 - K/E": e
                * (1 - (k / e) ** b),
            },
            hint="A given expert is missed by one token with probability 1 - K/E, by all B tokens"
            " with probability (1 - K/E)^B.",
        )
    return len(settings)


@exercise(NOTEBOOK, against="moe_lab.budget.all_to_all_bytes (the 'total' over all ranks)")
def check_all_to_all_bytes(attempt) -> int:
    """Check ``attempt(n_tokens, top_k, d_model, world_size, bytes_per_value) -> bytes``.

    The bytes expert parallelism moves per MoE block in one forward pass (a training step's
    backward moves as much again), summed over all W ranks, under uniform routing with experts
    and tokens spread evenly: the dispatch all-to-all sends each token's K copies (D values
    each) that land on another rank, the combine all-to-all sends the expert outputs back. Compared with ``moe_lab.budget.all_to_all_bytes(...)["total"]``.
    """
    settings = [  # (N, K, D, W, bytes per value, dtype)
        (4096, 8, 7168, 64, 2, "bf16"),  # DeepSeek-V3's width and top-8 (notebook 06)
        (1024, 2, 4096, 8, 2, "bf16"),
        (512, 1, 1024, 1, 4, "fp32"),  # one rank: nothing leaves it
        (100, 2, 64, 4, 1, "fp8"),
    ]
    base = dict(PRESETS["Mixtral-8x7B"].config)
    for number, (n, k, d, w, width, dtype) in enumerate(settings, start=1):
        case = f"case {number} of {len(settings)} (N={n}, K={k}, D={d}, W={w}, {width} bytes per value)"
        got = call(attempt, n, k, d, w, width, case=case)
        config = {
            **base,
            "hidden_size": d,
            "num_experts_per_tok": k,
            "num_local_experts": max(8, k),
        }
        expected = all_to_all_bytes(from_hf_config(config), n, w, dtype)["total"]
        everything = 2 * n * k * d * width
        expect_number(
            got,
            expected,
            "the byte count",
            case,
            rel=1e-9,
            mistakes={
                "every copy is counted as sent, including those whose expert is on the token's"
                " own rank: under uniform routing only (W-1)/W of them leave": everything,
                "only one direction is counted: the combine all-to-all sends the expert outputs"
                " back, as many bytes again": expected / 2,
                "one copy per token is counted: each token goes to K experts, so K copies": expected
                / k
                if k > 1
                else -1,
                "only one rank's bytes are counted: the question asks the sum over all W ranks": expected
                / w
                if w > 1
                else -1,
            },
            hint="2 all-to-alls x N·K copies x D values x bytes per value x (W-1)/W.",
        )
    return len(settings)
