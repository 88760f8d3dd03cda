"""Numeric questions of notebook 05, specialization and collapse: the normalized mutual
information of an expert x label table, the consecutive-token repetition rate the loads alone
give, router saturation between two snapshots, dead experts in a load vector, and the share of
tokens that choose a given pair of experts under independence.

Each generator draws a case from a seed and answers it with ``moe_lab.analysis`` itself:
``normalized_mutual_information`` on the drawn table, ``consecutive_rates`` on a capture built
from the drawn first choices, ``saturation`` on the drawn snapshots, ``dead_experts`` on the drawn
loads, ``independent_pair_shares`` at uniform inclusion rates. ``tests/test_grill_numeric.py``
redoes each by hand. Importing ``moe_lab.grill.numeric`` registers them (it imports this module
last).

Taught in: notebooks/05_specialization.ipynb; asked in notebooks/08_interview_grill.ipynb.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import torch

from moe_lab.analysis.capture import RoutingCapture
from moe_lab.analysis.coactivation import independent_pair_shares
from moe_lab.analysis.collapse import DEAD_FRACTION, dead_experts
from moe_lab.analysis.consecutive import consecutive_rates
from moe_lab.analysis.saturation import saturation
from moe_lab.analysis.specialization import normalized_mutual_information
from moe_lab.grill.numeric import NumericCase, _register, show


def _entropy(counts: list[int]) -> float:
    """Entropy in nats of a list of counts (0 log 0 = 0), for the workings."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


# ----------------------------------------------------------------------------------------------
# Specialization: normalized mutual information of a contingency table
# ----------------------------------------------------------------------------------------------


@_register("nmi")
def nmi(rng: random.Random) -> NumericCase:
    n_experts, n_labels = rng.choice(((2, 2), (3, 2), (2, 3), (3, 3), (4, 2)))
    labels = rng.choice((("code", "english", "records"), ("letter", "digit", "space")))
    while True:  # every row and column used, at least one empty cell (as real tables have)
        table = [[rng.choice((0, 0, 1, 2, 4, 6, 8, 10, 12)) for _ in range(n_labels)]
                 for _ in range(n_experts)]  # fmt: skip
        rows, cols = [sum(r) for r in table], [sum(c) for c in zip(*table, strict=True)]
        if all(rows) and all(cols) and any(0 in r for r in table):
            break
    value = float(normalized_mutual_information(torch.tensor(table)))
    cells = [c for row in table for c in row]
    h_x, h_y, h_xy = _entropy(rows), _entropy(cols), _entropy(cells)
    header = " | ".join(labels[:n_labels])
    lines = "\n".join(
        f"| expert {e} | " + " | ".join(str(c) for c in row) + " |" for e, row in enumerate(table)
    )
    return NumericCase(
        prompt=(
            f"The first-choice expert X of {sum(rows)} tokens against their label Y, as counts:"
            f"\n\n| | {header} |\n|---" + "|---" * n_labels + f"|\n{lines}\n\n"
            "What is the normalized mutual information NMI = 2·I(X; Y) / (H(X) + H(Y)), with"
            " I(X; Y) = H(X) + H(Y) − H(X, Y)? (The ratio is the same in any logarithm base.)"
            " Two decimals."
        ),
        value=value,
        unit="",
        working=(
            f"Row sums {rows}, column sums {cols}. In nats: H(X) = {h_x:.4f}, H(Y) = {h_y:.4f},"
            f" H(X, Y) = {h_xy:.4f} (empty cells count 0: 0·log 0 = 0), so I = {h_x + h_y - h_xy:.4f}"
            f" and NMI = 2·I / (H(X) + H(Y)) = **{value:.4f}**. 1 means each of expert and label"
            " determines the other; 0 means independence. On a finite sample chance alone gives"
            " more than 0, so compare with the same table's NMI after shuffling the labels."
        ),
        params={"table": table},
        abs_tol=0.005,
    )


# ----------------------------------------------------------------------------------------------
# Consecutive tokens: what the loads alone give
# ----------------------------------------------------------------------------------------------


def _first_choice_capture(choices: list[int], n_experts: int) -> RoutingCapture:
    """A capture of one window whose first choices are ``choices`` (top-1, no labels needed)."""
    indices = torch.tensor(choices)[:, None]  # (L, 1)
    probs = torch.nn.functional.one_hot(indices[:, 0], n_experts).double()  # (L, E)
    zeros = torch.zeros(len(choices), dtype=torch.long)
    return RoutingCapture(
        tokens=zeros,
        domain=zeros,
        char_class=zeros,
        position=torch.arange(len(choices)),
        indices={0: indices},
        weights={0: torch.ones(len(choices), 1)},
        probs={0: probs},
        domain_names=("text",),
    )


@_register("consecutive_expected")
def consecutive_expected(rng: random.Random) -> NumericCase:
    n_experts, length = 4, rng.choice((16, 20, 24))
    shares = [rng.randint(1, 6) for _ in range(n_experts)]
    choices = [rng.choices(range(n_experts), weights=shares)[0]]
    while len(choices) < length:  # sticky: repeat the last expert half of the time
        repeat = rng.random() < 0.5
        choices.append(choices[-1] if repeat else rng.choices(range(n_experts), shares)[0])
    rates = consecutive_rates(_first_choice_capture(choices, n_experts), 0)
    value = rates.first_choice_expected
    counts = [Counter(choices)[e] for e in range(n_experts)]
    terms = " + ".join(f"({c}/{length})²" for c in counts)
    return NumericCase(
        prompt=(
            f"The first-choice experts (of E = {n_experts}) of {length} consecutive tokens are"
            f" {choices}. How often would two *independent* tokens with these loads share their"
            " first choice, i.e. Σₑ pₑ² with pₑ the share of first choices going to e? The"
            " baseline to compare the observed repetition rate with. Three decimals (or a %)."
        ),
        value=value,
        unit="",
        working=(
            f"Loads {counts} of {length}: Σ pₑ² = {terms} = **{value:.4f}**, above the uniform"
            f" 1/E = {1 / n_experts:.3f} because the loads are uneven. The sequence itself"
            f" repeats its first choice for {rates.first_choice:.1%} of its {rates.n_pairs} pairs of"
            f" neighbours, {rates.first_choice / value:.2f} times the loads' rate: that ratio, not"
            " the raw rate, is the locality (Mixtral's Table 5 compares with uniform routing only)."
        ),
        params={"choices": choices, "E": n_experts},
        abs_tol=0.002,
    )


# ----------------------------------------------------------------------------------------------
# Router saturation between two snapshots
# ----------------------------------------------------------------------------------------------


@_register("saturation")
def saturation_case(rng: random.Random) -> NumericCase:
    n_experts, top_k, n_tokens = 8, 2, 4
    final = [rng.sample(range(n_experts), top_k) for _ in range(n_tokens)]
    earlier = []
    for experts in final:
        kept = rng.choice((0, 1, 1, 2, 2))
        same = rng.sample(experts, kept)
        others = rng.sample([e for e in range(n_experts) if e not in experts], top_k - kept)
        chosen = same + others
        rng.shuffle(chosen)  # the order within a top-K set is irrelevant to saturation
        earlier.append(chosen)
    value = saturation([earlier, final])[0]
    shared = [len(set(a) & set(b)) for a, b in zip(earlier, final, strict=True)]
    return NumericCase(
        prompt=(
            f"A router picks the top-{top_k} of {n_experts} experts. On {n_tokens} fixed probe"
            f" tokens it chose {earlier} at step t and {final} at the end of training (each"
            " token's experts as a list, best first). What is its router saturation at step t"
            " (OLMoE): the share of the final top-K choices already made at t,"
            " (1/N) Σᵢ |Sᵢ(t) ∩ Sᵢ(T)| / K? Three decimals."
        ),
        value=value,
        unit="",
        working=(
            f"Experts shared with the final set, token by token: {shared} (as sets: the order"
            f" within a top-K set does not matter); saturation = {sum(shared)}/({n_tokens}·{top_k})"
            f" = **{value:.3f}**. A random top-{top_k} set would keep K/E ="
            f" {top_k / n_experts:.2f} on average; a router that never changes (hash) is at 1 from"
            " the start. Saturation counts which experts, not with what weights."
        ),
        params={"earlier": earlier, "final": final, "K": top_k},
        abs_tol=0.001,
    )


# ----------------------------------------------------------------------------------------------
# Routing collapse: dead experts in a load vector
# ----------------------------------------------------------------------------------------------


@_register("dead_experts")
def dead_experts_case(rng: random.Random) -> NumericCase:
    n_experts = rng.choice((8, 16))
    while True:
        busy = [rng.randint(300, 1500) for _ in range(n_experts)]
        starved = rng.sample(range(n_experts), rng.randint(1, n_experts // 2))
        loads = [rng.choice((0, 1, 2, 4, 6, 9, 12, 20)) if e in starved else busy[e]
                 for e in range(n_experts)]  # fmt: skip
        threshold = DEAD_FRACTION * sum(loads) / n_experts
        if all(abs(load - threshold) > 0.5 for load in loads):  # no load on the line itself
            break
    value = dead_experts(torch.tensor(loads))
    mean = sum(loads) / n_experts
    below = [load for load in loads if load < threshold]
    return NumericCase(
        prompt=(
            f"Over the last training batches the {n_experts} experts of an MoE block received"
            f" these numbers of token assignments: {loads}. Counting an expert as dead when it"
            f" gets under {DEAD_FRACTION:.0%} of the mean load (notebook 05's rule), how many"
            " experts are dead?"
        ),
        value=float(value),
        unit="experts",
        working=(
            f"Mean load {sum(loads)}/{n_experts} = {mean:.2f}, so the line is {threshold:.2f}"
            f" assignments; the loads below it are {below}: **{value}** dead. A load of a few"
            " tokens is not zero, but an expert that sees a hundredth of its share learns next to"
            " nothing: counting only exact zeros undercounts collapse."
        ),
        params={"loads": loads},
    )


# ----------------------------------------------------------------------------------------------
# Co-activation: pair shares under independence
# ----------------------------------------------------------------------------------------------


@_register("pair_share")
def pair_share(rng: random.Random) -> NumericCase:
    n_experts = rng.choice((8, 16, 32, 64))
    top_k = rng.choice([k for k in (2, 4, 6, 8) if k <= n_experts // 4])
    inclusion = torch.full((n_experts,), top_k / n_experts, dtype=torch.float64)  # (E,)
    value = float(independent_pair_shares(inclusion, top_k)[0, 1])
    naive = (top_k / n_experts) ** 2
    return NumericCase(
        prompt=(
            f"Each token chooses K = {top_k} distinct experts out of E = {n_experts}, every"
            f" K-set equally likely (uniform, independent routing). What share of tokens chooses"
            " both expert 0 and expert 1: the reference a co-activation count is compared with?"
            " Four significant digits (or a %)."
        ),
        value=value,
        unit="",
        working=(
            f"The sets holding both: C(E−2, K−2) of C(E, K), so K(K−1) / (E(E−1)) ="
            f" {top_k * (top_k - 1)}/{n_experts * (n_experts - 1)} = **{show(value)}**. The"
            f" product of the two inclusion rates, (K/E)² = {show(naive)}, is wrong: a token"
            " cannot choose the same expert twice, so given expert 0 the other K − 1 slots are"
            " shared by E − 1 experts. Against that product every pair would look avoided."
        ),
        params={"E": n_experts, "K": top_k},
        rel_tol=0.005,
    )
