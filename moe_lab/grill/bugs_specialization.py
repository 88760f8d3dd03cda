"""The "spot the bug" checkers of notebook 05: measuring what experts learn.

- ``nmi_zero_cells``: a normalized mutual information written with ``-(p * p.log()).sum()``.
  Every empty cell of the expert x label table gives 0 x (-inf) = nan, and the tables of
  specialized routers are mostly empty cells, so the score is nan exactly where it matters
  (and a comparison with nan is silently False). Graded against
  ``moe_lab.analysis.normalized_mutual_information`` on dense tables, sparse ones, a dead
  expert, a router that copies the label (NMI 1) and a label the router ignores.
- ``coactivation_product``: a co-activation lift that divides the observed pair shares by the
  product of the two experts' inclusion rates. A token chooses K *distinct* experts, so even
  independent routing chooses a given pair less often than that product (at uniform top-2 of 8:
  1/28, not 1/16) and every pair looks avoided. Graded against the lift of
  ``moe_lab.analysis.coactivation`` (observed pair shares over ``independent_pair_shares``, the
  conditional-Poisson independence given the loads) on routings with uniform and uneven loads.

Importing ``moe_lab.grill.bugs`` registers them (it imports this module last).

References: Strehl & Ghosh 2002 and Vinh et al. 2010 (NMI with the arithmetic-mean
normalization); Muennighoff et al. 2024, OLMoE, section 5 (expert co-activation); Chen,
Dempster & Liu 1994 (conditional Poisson sampling).

Taught in: notebooks/05_specialization.ipynb (specialization, co-activation).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moe_lab.analysis.coactivation import coactivation_of_sets, independent_pair_shares, pair_counts
from moe_lab.analysis.specialization import normalized_mutual_information
from moe_lab.grill.bugs import WrongAnswerError, _as_tensor, _expect_shape, _generator, _register
from moe_lab.grill.sandbox import reader_call

# ----------------------------------------------------------------------------------------------
# Normalized mutual information, with empty cells
# ----------------------------------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    """A reader's scalar (a Python number or a one-element tensor) as a float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise WrongAnswerError(f"{what} has shape {tuple(value.shape)}, expected one number")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongAnswerError(f"{what} is a {type(value).__name__}, expected a number")
    return float(value)


def _nmi_cases(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = _generator(seed)
    dense = torch.randint(1, 30, (8, 4), generator=g)  # (E, C) no empty cell
    sparse = torch.randint(0, 30, (8, 5), generator=g)
    sparse[torch.rand(8, 5, generator=g) < 0.6] = 0  # (E, C) mostly empty, like a specialist's
    sparse[:, 0] += 1  # no empty column
    sparse[0] += 1  # no empty row
    dead = torch.randint(1, 30, (8, 4), generator=g)
    dead[3] = 0  # expert 3 never chosen (a dead expert)
    copy = torch.diag(torch.randint(5, 40, (4,), generator=g))  # expert = label
    ignored = torch.randint(1, 30, (6, 1), generator=g)  # one label value: nothing to explain
    return [
        ("an 8 x 4 table with no empty cell", dense),
        ("an 8 x 5 table with 60% of its cells empty (a specialized router)", sparse),
        ("an 8 x 4 table whose expert 3 was never chosen (a dead expert)", dead),
        ("a router that copies the label (expert = label): NMI 1", copy),
        ("a label with one value (nothing to explain): NMI 0", ignored),
    ]


@_register("nmi_zero_cells", entry="nmi")
def check_nmi_zero_cells(nmi: Any, seed: int) -> str:
    """Reference: ``normalized_mutual_information`` on tables with and without empty cells."""
    for name, table in _nmi_cases(seed):
        expected = float(normalized_mutual_information(table))
        got = _number(reader_call("calling your `nmi`", nmi, table.clone()), "what `nmi` returns")
        if math.isnan(got):
            raise WrongAnswerError(
                f"with {name}, your nmi returns nan (moe_lab: {expected:.4f}). An empty cell gives"
                " p·log p = 0·(−inf) = nan in floating point, and tables of specialized routers"
                " are mostly empty cells, so the score is nan exactly where you need it (and"
                " `nan > x` is silently False). Entropy takes 0·log 0 = 0: compute p·log p with"
                " torch.special.entr(p) (= −p·log p) or torch.xlogy(p, p)"
            )
        if not math.isfinite(got) or abs(got - expected) > 1e-6:
            raise WrongAnswerError(
                f"with {name}, your nmi is {got:.6g}; moe_lab's normalized_mutual_information is"
                f" {expected:.6g} (NMI = 2·I(X; Y) / (H(X) + H(Y)))"
            )
    return (
        "equal to moe_lab's normalized_mutual_information on dense and mostly empty tables, with a"
        " dead expert, a label-copying router (1) and a one-valued label (0)"
    )


# ----------------------------------------------------------------------------------------------
# Co-activation against independence
# ----------------------------------------------------------------------------------------------


def _reference_lift(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(E, E) observed pair share / independent pair share, as moe_lab.analysis.coactivation."""
    return coactivation_of_sets(indices, n_experts).lift()


def _coactivation_cases(seed: int) -> list[tuple[str, torch.Tensor, int]]:
    g = _generator(seed)
    every_pair = torch.combinations(torch.arange(8), 2).repeat(3, 1)  # (84, 2) uniform loads
    every_pair = every_pair[torch.randperm(every_pair.shape[0], generator=g)]
    favour = torch.tensor([6.0, 4, 3, 2, 1, 1, 0.5, 0.5])  # uneven loads
    uneven = torch.multinomial(favour.expand(200, 8), 2, generator=g)  # (200, 2) distinct
    top4 = torch.rand(150, 12, generator=g).topk(4, dim=-1).indices  # (150, 4)
    return [
        ("every pair of 8 experts chosen equally often at top-2 (independent, uniform)",
         every_pair, 8),
        ("top-2 of 8 with uneven loads", uneven, 8),
        ("top-4 of 12", top4, 12),
    ]  # fmt: skip


@_register(
    "coactivation_product",
    entry="coactivation_lift",
    independent_pair_shares=independent_pair_shares,
)
def check_coactivation_product(lift_fn: Any, seed: int) -> str:
    """Reference: the lift of ``moe_lab.analysis.coactivation``, off-diagonal entries."""
    for name, indices, n_experts in _coactivation_cases(seed):
        n_tokens = indices.shape[0]
        expected = _reference_lift(indices, n_experts)  # (E, E)
        got = reader_call("calling your `coactivation_lift`", lift_fn, indices.clone(), n_experts)
        got = _as_tensor(got, "what `coactivation_lift` returns")
        _expect_shape(got, (n_experts, n_experts), "the lift")
        off = ~torch.eye(n_experts, dtype=torch.bool)
        gap = (got.detach().double() - expected).abs()[off]
        if bool(torch.isfinite(gap).all()) and float(gap.max()) <= 1e-6:
            continue
        rates = pair_counts(indices, n_experts).diagonal().double() / n_tokens  # (E,)
        product = pair_counts(indices, n_experts).double() / n_tokens / torch.outer(rates, rates)
        mean_got, mean_expected = float(got.double()[off].mean()), float(expected[off].mean())
        if float((got.detach().double() - product).abs()[off].max()) <= 1e-6:
            raise WrongAnswerError(
                f"with {name}, your lifts average {mean_got:.3f} where independence should read"
                f" about {mean_expected:.3f}: you divide by the product of the two experts'"
                " inclusion rates. A token chooses K distinct experts, so given expert i the"
                " other K − 1 slots are shared by the E − 1 others: even independent uniform"
                " top-2 of 8 chooses a given pair for 1/28 of tokens, not (2/8)² = 1/16, and"
                " every pair looks avoided. Compare with `independent_pair_shares(rates, K)`"
                " (independence given the loads, conditioned on exactly K experts per token)"
            )
        raise WrongAnswerError(
            f"with {name}, your lift differs from moe_lab's (largest difference"
            f" {float(gap.max()):.4g} off the diagonal): the lift is the share of tokens choosing"
            " both experts divided by `independent_pair_shares(rates, K)`, rates being the share"
            " of tokens choosing each expert"
        )
    return (
        "equal to moe_lab.analysis.coactivation's lift off the diagonal, on uniform and uneven"
        " loads, at top-2 and top-4"
    )
