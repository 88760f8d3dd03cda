"""Exercises of notebook 05, specialization and collapse: the normalized mutual information
between first-choice experts and a label, router saturation from routing snapshots, the
routing-collapse numbers of a load vector (MaxVio and dead experts), and linear CKA between two
experts' outputs.

Taught in: notebooks/05_specialization.ipynb (exercises at the end).
"""

from __future__ import annotations

import math

import torch

from moe_lab.analysis.collapse import DEAD_FRACTION, dead_experts, linear_cka
from moe_lab.analysis.saturation import saturation
from moe_lab.analysis.specialization import contingency_table, normalized_mutual_information
from moe_lab.balancing import max_violation
from moe_lab.exercises.core import (
    call,
    exercise,
    expect_close,
    expect_number,
    expect_pair,
    expect_tensor,
    fail,
)

NOTEBOOK = "05_specialization"


def _expect_finite(got: object, what: str, case: str, cause: str) -> None:
    """A number that is nan or infinite fails with ``cause``, the usual reason for it."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, float) and not math.isfinite(got):
        fail(f"{case}: {what} is {got}. {cause}")


# ----------------------------------------------------------------------------------------------
# 1. Normalized mutual information between first choices and a label
# ----------------------------------------------------------------------------------------------


def _entropies(table: torch.Tensor) -> tuple[float, float, float]:
    """H(X) of the rows, H(Y) of the columns, H(X, Y) of the cells, in nats (0 log 0 = 0)."""
    p = table.double() / table.sum()  # (E, C)
    h_x, h_y, h_xy = (float(torch.special.entr(q).sum()) for q in (p.sum(1), p.sum(0), p))
    return h_x, h_y, h_xy


def _nmi_mistakes(table: torch.Tensor) -> dict[str, float]:
    h_x, h_y, h_xy = _entropies(table)
    mi = h_x + h_y - h_xy
    h_rows_twice = 2 * h_x
    mistakes = {
        "the mutual information is returned without normalizing it (NMI divides 2·I by"
        " H(X) + H(Y))": mi,
        "I is divided by the geometric mean √(H(X)·H(Y)) (another NMI in the literature; this"
        " notebook's is the arithmetic mean, 2·I / (H(X) + H(Y)))": mi / math.sqrt(h_x * h_y),
        "I is divided by the label's entropy H(Y) alone (or by min(H(X), H(Y)), the same here),"
        " which scores 1 for any router whose experts each see one label, however many experts"
        " share it: use 2·I / (H(X) + H(Y))": mi / h_y,
        "I is divided by the experts' entropy H(X) alone (or by max(H(X), H(Y)), the same here):"
        " use 2·I / (H(X) + H(Y))": mi / h_x,
        "I is divided by the joint entropy H(X, Y)": mi / h_xy,
        "both marginal entropies come from the same axis of the table (H(X) twice): H(Y) sums"
        " the table over the experts (dim 0)": 2 * (h_rows_twice - h_xy) / h_rows_twice,
    }
    return {d: v for d, v in mistakes.items() if math.isfinite(v)}


@exercise(NOTEBOOK, against="moe_lab.analysis.normalized_mutual_information of contingency_table")
def check_normalized_mutual_information(attempt) -> int:
    """Check ``attempt(expert, label, n_experts, n_labels) -> nmi``, a float.

    ``expert`` (L,) long: each token's first-choice expert, in ``[0, n_experts)``; ``label``
    (L,) long: its label, in ``[0, n_labels)``. The NMI is ``2·I(X; Y) / (H(X) + H(Y))`` of the
    (E, C) contingency table, with ``I = H(X) + H(Y) − H(X, Y)``, 0·log 0 = 0, and 0 when
    ``H(X) + H(Y) = 0``. Compared with
    ``normalized_mutual_information(contingency_table(...))`` on a random table, a router that
    copies the label (1), one that splits every label over two experts, an empty (dead) expert,
    a router independent of the label, and a single expert on a single label (0).
    """

    def skewed(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.randint(0, n_labels, (n,))
        noise = torch.randint(0, n_experts, (n,))
        keep = torch.rand(n) < 0.6  # 60% of tokens follow their label, the rest are random
        return torch.where(keep, (label * 3) % n_experts, noise), label

    def copy(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.randint(0, n_labels, (n,))
        return label.clone(), label

    def split(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.randint(0, n_labels, (n,))
        return 2 * label + torch.randint(0, 2, (n,)), label  # experts 2c and 2c+1 serve label c

    def dead(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        expert, label = skewed(n, n_experts, n_labels)
        return torch.where(expert == 5, 6, expert), label  # expert 5 is never chosen

    def independent(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, n_experts, (n,)), torch.randint(0, n_labels, (n,))

    def constant(n: int, n_experts: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((n,), 2), torch.full((n,), 1)

    settings = [  # (description, maker, L, E, C)
        ("a router that follows the label for 60% of tokens", skewed, 2000, 8, 4),
        ("a router that copies the label: NMI 1", copy, 500, 4, 4),
        ("every label split over two experts", split, 800, 8, 4),
        ("expert 5 never chosen (a dead expert)", dead, 1500, 8, 5),
        ("a router independent of the label", independent, 3000, 8, 4),
        ("one expert and one label value: H(X) + H(Y) = 0, NMI 0", constant, 50, 4, 3),
    ]
    for seed, (description, make, n_tokens, n_experts, n_labels) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} ({description}: L={n_tokens}, E={n_experts},"
            f" C={n_labels}, seed {seed})"
        )
        torch.manual_seed(seed)
        expert, label = make(n_tokens, n_experts, n_labels)
        table = contingency_table(expert, label, n_experts, n_labels)  # (E, C)
        expected = float(normalized_mutual_information(table))
        got = call(attempt, expert.clone(), label.clone(), n_experts, n_labels, case=case)
        cause = (
            "With one expert and one label both entropies are 0 and 2·I / (H(X) + H(Y)) is 0/0:"
            " return 0 when H(X) + H(Y) = 0 (nothing to explain)."
            if description.startswith("one expert")
            else "An empty cell of the table gives p·log p = 0·(−inf) = nan: entropy takes"
            " 0·log 0 = 0, so compute −p·log p with torch.special.entr(p) or −torch.xlogy(p, p)."
        )
        _expect_finite(got, "the NMI", case, cause)
        expect_number(
            got,
            expected,
            "the NMI",
            case,
            mistakes=_nmi_mistakes(table) if expected > 0 else {},
            hint="NMI = 2·I / (H(X) + H(Y)), entropies of the row sums, the column sums and the"
            " cells of the (E, C) table of counts.",
            rel=1e-5,
        )
    return len(settings)


# ----------------------------------------------------------------------------------------------
# 2. Router saturation
# ----------------------------------------------------------------------------------------------


def _as_values(got: object, what: str, n: int, case: str) -> torch.Tensor:
    """A list or tensor of ``n`` numbers as a float64 tensor."""
    if isinstance(got, list | tuple):
        try:
            got = torch.tensor([float(v) for v in got], dtype=torch.float64)
        except (TypeError, ValueError):
            fail(f"{case}: {what} holds something that is not a number: {got!r:.80}")
    return expect_tensor(
        got,
        what,
        (n,),
        "(S,)",
        case,
        shape_hints={(): "one value per snapshot, the last one 1"},
    )


def _saturation_mistakes(choices: torch.Tensor) -> dict[str, torch.Tensor]:
    final = choices[-1]  # (N, K)
    first = choices[0]
    kept = (choices[:, :, :, None] == final[None, :, None, :]).any(-1)  # (S, N, K)
    from_first = (choices[:, :, :, None] == first[None, :, None, :]).any(-1)
    union = 2 * choices.shape[-1] - kept.sum(-1)  # (S, N): |S(t) | S(T)|
    return {
        "the experts are compared position by position (choices[t][i][k] == final[i][k]): a"
        " top-K set has no order, so an expert ranked second at step t and first at the end is"
        " already a final choice; count |S(t) ∩ S(T)|": (choices == final).double().mean((-2, -1)),
        "each snapshot is compared with the first one; saturation compares with the last"
        " (final) choices, so it ends at 1": from_first.double().mean((-2, -1)),
        "only the first choices are compared (that is the top-1 variant); compare top-K sets": (
            choices[:, :, 0] == final[:, 0]
        )
        .double()
        .mean(-1),
        "a token counts when it shares any expert with its final set (a share of tokens); the"
        " share of the final choices is |S(t) ∩ S(T)| / K per token": kept.any(-1)
        .double()
        .mean(-1),
        "the overlap is divided by |S(t) ∪ S(T)| (Jaccard) instead of K": (
            kept.sum(-1) / union
        ).mean(-1),
    }


@exercise(NOTEBOOK, against="moe_lab.analysis.saturation")
def check_router_saturation(attempt) -> int:
    """Check ``attempt(snapshots) -> saturation``, S numbers (a list or an (S,) tensor).

    ``snapshots`` (S, N, K) long: the top-K experts of the same N probe tokens at S evaluations,
    oldest first. Saturation at snapshot s is the share of the final top-K choices already made
    at s: ``(1/N) Σᵢ |Sᵢ(s) ∩ Sᵢ(last)| / K``, comparing sets (the order inside a top-K list
    does not matter); the last value is 1. Compared with ``moe_lab.analysis.saturation`` on a
    router that never changes (all 1), snapshots that reorder the same experts, top-1, top-4 of
    16, and a single snapshot.
    """

    def drifting(s: int, n: int, k: int, e: int) -> torch.Tensor:
        choices = [torch.rand(n, e).topk(k, dim=-1).indices]  # (N, K)
        for _ in range(s - 1):
            step = choices[-1].clone()
            swap = torch.rand(n) < 0.4  # some tokens change one expert
            step[swap, -1] = torch.randint(0, e, (int(swap.sum()),))
            taken = (step[:, :, None] == step[:, None, :]).sum((-2, -1)) > k  # a repeat
            step[taken] = choices[-1][taken]
            flip = torch.rand(n) < 0.3  # some tokens reorder the same experts
            step[flip] = step[flip].flip(-1)
            choices.append(step)
        return torch.stack(choices)  # (S, N, K)

    def constant(s: int, n: int, k: int, e: int) -> torch.Tensor:
        return torch.rand(n, e).topk(k, dim=-1).indices.expand(s, n, k).clone()

    def random(s: int, n: int, k: int, e: int) -> torch.Tensor:
        return torch.rand(s, n, e).topk(k, dim=-1).indices

    settings = [  # (description, maker, S, N, K, E)
        ("top-2 of 8, drifting and reordering", drifting, 6, 32, 2, 8),
        ("a router that never changes (hash): all 1", constant, 5, 16, 2, 8),
        ("top-1 of 8", random, 4, 40, 1, 8),
        ("top-4 of 16, drifting and reordering", drifting, 5, 24, 4, 16),
        ("independent random top-2 of 8 at every snapshot", random, 7, 64, 2, 8),
        ("a single snapshot", random, 1, 10, 2, 8),
    ]
    for seed, (description, make, s, n, k, e) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} ({description}: S={s}, N={n}, K={k}, seed {seed})"
        )
        torch.manual_seed(seed)
        choices = make(s, n, k, e)  # (S, N, K)
        expected = torch.tensor(saturation(choices), dtype=torch.float64)  # (S,)
        got = _as_values(call(attempt, choices.clone(), case=case), "the saturation", s, case)
        expect_close(
            got,
            expected,
            "the saturation",
            case,
            mistakes=lambda choices=choices: _saturation_mistakes(choices),
            hint="For each token, count its experts at snapshot s that are among its final K,"
            " sum over tokens, divide by N·K.",
        )
    return len(settings)


# ----------------------------------------------------------------------------------------------
# 3. Routing collapse from a load vector: MaxVio and dead experts
# ----------------------------------------------------------------------------------------------


@exercise(
    NOTEBOOK,
    against="moe_lab.balancing.max_violation and moe_lab.analysis.dead_experts (under 1% of the"
    " mean load)",
)
def check_routing_collapse(attempt) -> int:
    """Check ``attempt(load) -> (max_violation, dead)``.

    ``load`` (E,): assignments per expert (counts or shares). ``max_violation`` is
    ``(max − mean) / mean`` (Wang et al. 2024), a float; ``dead`` the number of experts whose
    load is under 1% of the mean load, an int. Compared with ``max_violation`` and
    ``dead_experts`` on balanced loads, a collapse onto one expert, experts starved to 0.5% of
    the mean (dead, though not zero) and to 1.5% (alive), shares instead of counts, and 32
    experts.
    """
    settings = [  # (description, load)
        ("8 experts, mildly uneven", [130, 95, 110, 88, 120, 101, 79, 117]),
        ("one hot expert and seven small ones", [5000, 30, 30, 52, 70, 80, 90, 100]),
        ("balanced: MaxVio 0, none dead", [64] * 8),
        ("collapse onto one expert of 8", [512, 0, 0, 0, 0, 0, 0, 0]),
        ("two experts starved to 0.5% of the mean (dead, not zero) and one to 1.5% (alive)",
         [1000, 5, 1000, 15, 1000, 5, 1000, 974]),
        ("shares instead of counts", [0.3, 0.25, 0.2, 0.15, 0.0999, 0.0001, 0.0, 0.0]),
        ("32 experts, half of them starved", None),
    ]  # fmt: skip
    for seed, (description, load) in enumerate(settings):
        case = f"case {seed + 1} of {len(settings)} ({description}, seed {seed})"
        torch.manual_seed(seed)
        if load is None:
            load = (torch.randint(200, 400, (32,)) * (torch.rand(32) < 0.5)).tolist()
        load = torch.tensor(load, dtype=torch.float64 if isinstance(load[0], float) else None)
        got = expect_pair(call(attempt, load.clone(), case=case), "(max_violation, dead)", case)
        values = load.double()
        mean = values.mean()
        _expect_finite(got[0], "max_violation", case, "")
        expect_number(
            got[0],
            max_violation(load),
            "max_violation",
            case,
            mistakes={
                "MaxVio is (max − min) / mean; it is (max − mean) / mean": float(
                    (values.max() - values.min()) / mean
                ),
                "the mean is not subtracted: max / mean is 1 + MaxVio": float(values.max() / mean),
                "the excess is divided by the max; MaxVio divides it by the mean": float(
                    (values.max() - mean) / values.max()
                ),
            },
            rel=1e-6,
        )
        total, biggest = values.sum(), values.max()
        expect_number(
            got[1],
            dead_experts(load),
            "the number of dead experts",
            case,
            integer=True,
            mistakes={
                "only experts with no assignment at all are counted; an expert is dead under"
                f" {DEAD_FRACTION:.0%} of the mean load": int((values == 0).sum()),
                f"the line is {DEAD_FRACTION:.0%} of the total load; it is {DEAD_FRACTION:.0%}"
                " of the mean load": int((values < DEAD_FRACTION * total).sum()),
                f"the line is {DEAD_FRACTION:.0%} of the largest load; it is {DEAD_FRACTION:.0%}"
                " of the mean load": int((values < DEAD_FRACTION * biggest).sum()),
            },
            hint=f"Dead: load < {DEAD_FRACTION} × mean load.",
        )
    return len(settings)


# ----------------------------------------------------------------------------------------------
# 4. Linear CKA between two experts' outputs
# ----------------------------------------------------------------------------------------------


def _cka_mistakes(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)

    def cka(a: torch.Tensor, b: torch.Tensor, squared: bool = True) -> float:
        cross = torch.linalg.matrix_norm(b.t() @ a)
        norm = torch.linalg.matrix_norm(a.t() @ a) * torch.linalg.matrix_norm(b.t() @ b)
        return float((cross**2 if squared else cross) / norm)

    flat = (
        torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
        if x.shape == y.shape
        else None
    )
    mistakes = {
        "the outputs are not centred: subtract each column's mean over the N inputs first (CKA"
        " compares how the outputs vary across inputs, not their offsets)": cka(x, y),
        "||Yᵀ X||_F is not squared: CKA = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)": cka(
            xc, yc, squared=False
        ),
        "each row (input) is centred over its features; centre each column (feature) over the"
        " N inputs: x - x.mean(dim=0)": cka(
            x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        ),
    }
    if flat is not None:
        mistakes["the flattened outputs are correlated (one Pearson correlation over all"
                 " entries); CKA compares the (N, p) and (N, q) representations through their"
                 " Gram matrices"] = float(flat)  # fmt: skip
    return {d: v for d, v in mistakes.items() if math.isfinite(v)}


@exercise(NOTEBOOK, against="moe_lab.analysis.linear_cka")
def check_linear_cka(attempt) -> int:
    """Check ``attempt(x, y) -> cka``, a float.

    ``x`` (N, p) and ``y`` (N, q): two representations of the same N inputs (here, two experts'
    outputs). Linear CKA (Kornblith et al. 2019) centres every column over the N inputs, then
    ``CKA = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)``. Compared with
    ``moe_lab.analysis.linear_cka`` on identical outputs (1), outputs rotated and scaled (1),
    shifted by a constant (1: centring), independent outputs, outputs of different widths, and
    a linear map with noise.
    """

    def rotation(d: int) -> torch.Tensor:
        return torch.linalg.qr(torch.randn(d, d)).Q  # (d, d) orthogonal

    settings = [  # (description, N, p, q, maker)
        ("a linear map of x plus noise", 64, 16, 16,
         lambda x: x @ torch.randn(16, 16) + 0.5 * torch.randn(64, 16)),
        ("identical outputs: CKA 1", 40, 8, 8, lambda x: x.clone()),
        ("rotated and scaled by 3: CKA 1", 50, 12, 12, lambda x: 3 * x @ rotation(12)),
        ("shifted by a constant vector: CKA 1 once centred", 48, 10, 10,
         lambda x: x + 5 + torch.randn(10)),
        ("independent outputs", 200, 16, 16, lambda x: torch.randn(200, 16)),
        ("different widths: p = 16, q = 6", 80, 16, 6,
         lambda x: torch.tanh(x @ torch.randn(16, 6))),
    ]  # fmt: skip
    for seed, (description, n, p, q, make) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} ({description}: N={n}, p={p}, q={q}, seed {seed})"
        )
        torch.manual_seed(seed)
        x = torch.randn(n, p) + 0.3  # (N, p), not centred
        y = make(x)  # (N, q)
        expected = linear_cka(x, y)
        got = call(attempt, x.clone(), y.clone(), case=case)
        _expect_finite(got, "the CKA", case, "")
        expect_number(
            got,
            expected,
            "the CKA",
            case,
            mistakes=_cka_mistakes(x, y),
            hint="Centre the columns, then ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F).",
            rel=1e-4,
        )
    return len(settings)
