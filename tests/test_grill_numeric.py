"""Every numeric grill question's answer (computed by moe_lab) against a hand computation written
out here from the drawn numbers, for several seeds; and the grading of typed numbers."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from moe_lab.grill.bank import load_bank
from moe_lab.grill.grading import grade, make_instance, parse_number, parse_verdict
from moe_lab.grill.numeric import GENERATORS, generate

SEEDS = (0, 1, 2, 3)


def capacity_by_hand(N, E, K, cf):
    # C = ceil(cf * N * K / E), computed exactly with fractions (no float round-off)
    return max(1, math.ceil(Fraction(str(cf)) * N * K / E))


def dropped_tokens_by_hand(N, E, K, cf, choices):
    # Slot-major priority: every first choice in token order, then every second choice.
    capacity = capacity_by_hand(N, E, K, cf)
    used = [0] * E
    kept = [[False] * K for _ in range(N)]
    for slot in range(K):
        for n in range(N):
            expert = choices[n][slot]
            if used[expert] < capacity:
                used[expert] += 1
                kept[n][slot] = True
    return sum(1 for n in range(N) if not any(kept[n]))


def aux_loss_by_hand(E, N, K, counts, P):
    # L = E * sum_i f_i P_i, f_i = count_i / (N K)
    return E * sum(c / (N * K) * p for c, p in zip(counts, P, strict=True))


def max_violation_by_hand(loads):
    mean = sum(loads) / len(loads)
    return (max(loads) - mean) / mean


def z_loss_by_hand(logits):
    return sum(math.log(sum(math.exp(z) for z in row)) ** 2 for row in logits) / len(logits)


def mixtral_total_by_hand(D, F, L, H, KV, E, K, V, experts=None):
    # per block: q, o (D x 128H each), k, v (D x 128KV each), `experts` SwiGLU experts (3 D x F),
    # the router (E x D), two RMSNorms (D each); then the final norm, embedding and untied head
    experts = E if experts is None else experts
    per_block = 2 * D * 128 * H + 2 * D * 128 * KV + experts * 3 * D * F + E * D + 2 * D
    return L * per_block + D + 2 * V * D


def flops_by_hand(D, F, L, H, KV, E, K, V, context):
    # 2 FLOPs per weight multiplied (no embedding lookup, no norms) + the attention scores
    matmul_weights = L * (2 * D * 128 * H + 2 * D * 128 * KV + K * 3 * D * F + E * D) + D * V
    scores = L * 2 * H * (128 + 128) * context
    return 2 * matmul_weights + scores


def experts_touched_by_hand(E, K, B):
    # a token's K-subset misses a given expert in C(E-1, K) of C(E, K) equally likely subsets
    miss_one = math.comb(E - 1, K) / math.comb(E, K)
    return E * (1 - miss_one**B)


def moe_layer_by_hand(D, F, E, K, matrices, shared, m, active):
    width = F // m  # fine-grained: E*m experts of width F/m, K*m of them per token
    expert = matrices * D * width
    routed = (K * m if active else E * m) * expert
    return routed + shared * expert + D * E * m  # shared experts have the same width; router


def ladder_flops_by_hand(backend, N, D, F, E, K, cf):
    # 2 FLOPs per multiply-add: router on N tokens; three D x F expert matrices per expert row
    router = 2 * N * D * E
    if backend == "sorted":
        return router + 2 * N * K * D * F * 3  # exactly the N*K routed rows
    if backend == "masked":
        return router + 2 * N * E * D * F * 3  # every expert on every token
    C = capacity_by_hand(N, E, K, cf)  # GShard: E buffers of C rows, and two (N, E, C) einsums
    return router + 2 * E * C * D * F * 3 + 2 * (2 * N * E * C * D)


def host_syncs_by_hand(backend, E, L, validate):
    # On CUDA: torch.where -> nonzero once per expert; the Python loop over sorted experts reads
    # its offsets once (tolist); grouped_mm takes device offsets; masked and einsum have static
    # shapes; the finiteness check is one bool() per layer.
    per_layer = {"naive": E, "sorted": 1, "grouped": 0, "masked": 0, "einsum": 0}[backend]
    return L * (per_layer + int(validate))


def ep_rank_bytes_by_hand(W, E, D, per_value, rank, backward, choices):
    # contiguous blocks: token n on rank n // (N/W), expert e on rank e // (E/W)
    per_rank_tokens, per_rank_experts = len(choices) // W, E // W
    rows = 0
    for n, experts in enumerate(choices):
        source = n // per_rank_tokens
        for e in experts:
            destination = e // per_rank_experts
            if source != destination and rank in (source, destination):
                rows += 1  # rank sends it in the dispatch (source) or in the combine (destination)
    return rows * D * per_value * (2 if backward else 1)


def groups_touched_by_hand(E, G, K):
    # P(a group of E/G experts is missed) = prod_i (E - E/G - i) / (E - i), i < K
    miss = 1.0
    for i in range(K):
        miss *= (E - E // G - i) / (E - i)
    return G * (1 - miss)


def nmi_by_hand(table):
    # NMI = 2 I / (H(X) + H(Y)), I = H(X) + H(Y) - H(X, Y), entropies from counts, 0 log 0 = 0
    def entropy(counts):
        total = sum(counts)
        return -sum(c / total * math.log(c / total) for c in counts if c > 0)

    h_rows = entropy([sum(row) for row in table])
    h_cols = entropy([sum(col) for col in zip(*table, strict=True)])
    h_joint = entropy([c for row in table for c in row])
    return 2 * (h_rows + h_cols - h_joint) / (h_rows + h_cols)


def consecutive_expected_by_hand(choices, E):
    # two independent tokens share a first choice with probability sum_e p_e^2
    return sum((choices.count(e) / len(choices)) ** 2 for e in range(E))


def saturation_by_hand(earlier, final, K):
    # OLMoE: the mean over tokens of |S(t) & S(T)| / K, sets compared regardless of order
    return sum(len(set(a) & set(b)) for a, b in zip(earlier, final, strict=True)) / (len(final) * K)


def dead_experts_by_hand(loads):
    # dead: strictly under 1% of the mean load (notebook 05's rule)
    mean = sum(loads) / len(loads)
    return sum(1 for load in loads if load < 0.01 * mean)


def pair_share_by_hand(E, K):
    # uniform K-sets: those holding experts 0 and 1 are C(E-2, K-2) of the C(E, K)
    return math.comb(E - 2, K - 2) / math.comb(E, K)


HAND = {
    "capacity": lambda p: capacity_by_hand(p["N"], p["E"], p["K"], p["cf"]),
    "dropped_tokens": lambda p: dropped_tokens_by_hand(
        p["N"], p["E"], p["K"], p["cf"], p["choices"]
    ),
    "aux_loss": lambda p: aux_loss_by_hand(p["E"], p["N"], p["K"], p["counts"], p["P"]),
    "max_violation": lambda p: max_violation_by_hand(p["loads"]),
    "z_loss": lambda p: z_loss_by_hand(p["logits"]),
    "collapsed_aux_loss": lambda p: p["E"] / p["m"],
    "model_total": lambda p: mixtral_total_by_hand(**p) / 1e9,
    "model_active": lambda p: mixtral_total_by_hand(**p, experts=p["K"]) / 1e9,
    "weight_memory": lambda p: (
        mixtral_total_by_hand(**{k: v for k, v in p.items() if k != "bytes"}) * p["bytes"] / 1e9
    ),
    "flops_per_token": lambda p: flops_by_hand(**p) / 1e9,
    "kv_cache": lambda p: 2 * p["L"] * p["KV"] * p["hd"] * p["T"] * p["B"] * p["bytes"] / 1e9,
    "experts_touched": lambda p: experts_touched_by_hand(p["E"], p["K"], p["B"]),
    "moe_layer_params": lambda p: moe_layer_by_hand(**p, active=False),
    "moe_layer_active": lambda p: moe_layer_by_hand(**p, active=True),
    "all_to_all": lambda p: 2 * p["N"] * p["K"] * p["D"] * (p["W"] - 1) / p["W"] * p["bytes"] / 1e6,
    "useful_fraction": lambda p: (sum(p["loads"]) / len(p["loads"])) / max(p["loads"]),
    "ladder_flops": lambda p: ladder_flops_by_hand(**p) / 1e6,
    "host_syncs": lambda p: host_syncs_by_hand(**p),
    "ep_rank_bytes": lambda p: ep_rank_bytes_by_hand(
        p["W"], p["E"], p["D"], p["bytes"], p["rank"], p["backward"], p["choices"]
    ),
    # replicated parts plus E/W experts per block: the Mixtral count with E/W experts (router E)
    "ep_memory_per_device": lambda p: (
        mixtral_total_by_hand(
            **{k: v for k, v in p.items() if k not in ("W", "bytes")}, experts=p["E"] // p["W"]
        )
        * p["bytes"]
        / 1e9
    ),
    "groups_touched": lambda p: groups_touched_by_hand(p["E"], p["G"], p["K"]),
    # notebook 05
    "nmi": lambda p: nmi_by_hand(p["table"]),
    "consecutive_expected": lambda p: consecutive_expected_by_hand(p["choices"], p["E"]),
    "saturation": lambda p: saturation_by_hand(p["earlier"], p["final"], p["K"]),
    "dead_experts": lambda p: dead_experts_by_hand(p["loads"]),
    "pair_share": lambda p: pair_share_by_hand(p["E"], p["K"]),
}


def test_every_generator_has_a_hand_computation():
    assert set(HAND) == set(GENERATORS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("seed", SEEDS)
def test_library_answer_equals_the_hand_computation(name, seed):
    case = generate(name, seed)
    assert math.isclose(case.value, HAND[name](case.params), rel_tol=1e-6, abs_tol=1e-9), (
        name,
        seed,
        case.params,
    )


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_cases_are_seeded_and_vary(name):
    assert generate(name, 7) == generate(name, 7)
    prompts = {generate(name, seed).prompt for seed in range(6)}
    assert len(prompts) > 1


@pytest.mark.parametrize("name", ["capacity", "dropped_tokens", "experts_touched", "kv_cache"])
def test_prompts_show_the_drawn_numbers(name):
    case = generate(name, 3)
    for key in ("N", "E", "K", "L", "KV", "T", "B"):
        if key in case.params:
            assert f"{case.params[key]:,}" in case.prompt, (key, case.prompt)


NUMERIC = [q for q in load_bank() if q.kind == "numeric"]


@pytest.mark.parametrize("question", NUMERIC, ids=[q.id for q in NUMERIC])
def test_grading_accepts_the_answer_and_rejects_a_wrong_one(question):
    instance = make_instance(question, 11)
    value = instance.case.value
    right = grade(instance, f"{value:.6g}")
    assert right.correct is True and right.message.startswith("right")
    wrong = grade(instance, f"{value * 1.5 + 1:.6g}")
    assert wrong.correct is False and wrong.message.startswith("wrong, because the answer is")
    unreadable = grade(instance, "about forty")
    assert unreadable.correct is None and "not a number" in unreadable.message
    assert question.answer.strip() in right.explanation and str(question.link) in right.explanation


def test_scale_suffixes_are_read_in_the_question_unit():
    (question,) = [q for q in NUMERIC if q.generator == "model_total"]
    instance = make_instance(question, 0)
    billions = instance.case.value
    assert grade(instance, f"{billions:.4f}B").correct
    assert grade(instance, f"{billions * 1e9:.6e}").correct is False  # a raw count is not billions


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("640", 1, 640),
        ("1,234,944", 1, 1234944),
        ("1_000", 1, 1000),
        ("1 234 944", 1, 1234944),  # spaces as thousands separators
        ("1.5e9", 1, 1.5e9),
        ("85%", 1, 0.85),
        ("46.7B", 1e9, 46.7),
        ("93.4 GB", 1e9, 93.4),
        ("12 GFLOPs", 1e9, 12),
        ("396 MB", 1e6, 396),
        ("1.2M", 1, 1.2e6),
        ("  -0.5 ", 1, -0.5),
        ("\u22123", 1, -3),
    ],
)
def test_parse_number(text, scale, expected):
    assert math.isclose(parse_number(text, scale), expected)


@pytest.mark.parametrize("text", ["", "forty", "1..2", "12/34", "B12"])
def test_parse_number_rejects_non_numbers(text):
    with pytest.raises(ValueError, match="is not a number"):
        parse_number(text)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("True", "true"), ("f", "false"), ("partly true", "partly"), (" Partially! ", "partly")],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_parse_verdict_rejects_anything_else():
    with pytest.raises(ValueError, match="answer true, partly or false"):
        parse_verdict("it depends")
