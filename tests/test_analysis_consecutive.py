"""moe_lab.analysis.consecutive and .coactivation against hand-built routings.

References: Mixtral's chance rates (1/E; 1 - C(E-K, K)/C(E, K)), routings that repeat or
alternate by construction, brute-force pair enumeration, and routings sampled independently.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from moe_lab.analysis import RoutingCapture, coactivation, consecutive_rates, uniform_rates
from moe_lab.analysis.coactivation import independent_pair_shares, pair_counts
from moe_lab.analysis.consecutive import expected_overlap


def capture_of(indices: torch.Tensor, window: int = 64, n_experts: int = 8) -> RoutingCapture:
    length, k = indices.shape
    zeros = torch.zeros(length, dtype=torch.long)
    return RoutingCapture(
        tokens=zeros,
        domain=zeros,
        char_class=zeros,
        position=torch.arange(length) % window,
        indices={0: indices},
        weights={0: torch.full((length, k), 1.0 / k)},
        probs={0: torch.full((length, n_experts), 1.0 / n_experts)},
        domain_names=("a",),
    )


def random_sets(length: int, shares: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(L, K) sets drawn independently, without replacement, proportionally to ``shares``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(shares.expand(length, -1), k, replacement=False, generator=generator)


def test_uniform_rates_are_mixtrals_references() -> None:
    # Mixtral, Table 5 caption: 1/8 = 12.5% and 1 - (6/8)(5/7) ~ 46% for top-2 of 8.
    first, any_choice = uniform_rates(8, 2)
    assert first == 0.125
    assert any_choice == pytest.approx(1 - (6 / 8) * (5 / 7))


def test_repeating_and_alternating_routings() -> None:
    same = torch.tensor([[3, 5]]).repeat(640, 1)
    rates = consecutive_rates(capture_of(same), 0)
    assert rates.first_choice == 1.0 and rates.any_choice == 1.0
    alternating = torch.tensor([[0, 1], [2, 3]]).repeat(320, 1)  # (640, 2)
    rates = consecutive_rates(capture_of(alternating), 0)
    assert rates.first_choice == 0.0 and rates.any_choice == 0.0


def test_pairs_never_cross_a_window_boundary() -> None:
    # every window routes all its tokens to one expert, a different one per window: inside
    # windows the rate is 1, and the 9 window boundaries must not count as changes
    indices = torch.arange(10).repeat_interleave(64)[:, None] % 8
    rates = consecutive_rates(capture_of(indices), 0)
    assert rates.n_pairs == 10 * 63 and rates.first_choice == 1.0


def test_independent_uniform_routing_repeats_at_chance() -> None:
    sets = random_sets(200_000, torch.full((8,), 1 / 8), 2, seed=0)
    rates = consecutive_rates(capture_of(sets), 0)
    first, any_choice = uniform_rates(8, 2)
    # 200k pairs: standard errors about 0.0008 and 0.0011
    assert rates.first_choice == pytest.approx(first, abs=0.004)
    assert rates.any_choice == pytest.approx(any_choice, abs=0.005)
    assert rates.any_choice_expected == pytest.approx(any_choice, abs=0.005)


def test_skewed_loads_raise_chance_to_the_sum_of_squares() -> None:
    shares = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])
    generator = torch.Generator().manual_seed(1)
    top1 = torch.multinomial(shares, 100_000, replacement=True, generator=generator)[:, None]
    rates = consecutive_rates(capture_of(top1), 0)
    expected = float((shares**2).sum())  # two independent tokens: sum_e p_e^2 = 0.305
    assert rates.first_choice_expected == pytest.approx(expected, abs=0.005)
    assert rates.first_choice == pytest.approx(expected, abs=0.01)
    assert rates.first_choice > 2 * rates.first_choice_uniform  # chance is not 1/E here


def test_expected_overlap_against_brute_force() -> None:
    sets = random_sets(60, torch.tensor([0.4, 0.3, 0.1, 0.1, 0.05, 0.05]), 2, seed=2)
    rows = [set(r) for r in sets.tolist()]
    brute = sum(bool(a & b) for a in rows for b in rows) / len(rows) ** 2
    assert expected_overlap(sets, 6) == pytest.approx(brute, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Co-activation
# ---------------------------------------------------------------------------------------------
def enumerated_sets(odds: list[float], k: int) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every K-set with its conditional Poisson probability prod odds / sum: the reference."""
    sets = list(itertools.combinations(range(len(odds)), k))
    weights = torch.tensor([math.prod(odds[i] for i in s) for s in sets], dtype=torch.float64)
    return sets, weights / weights.sum()


def test_independent_pair_shares_uniform_top2_of_8() -> None:
    # K = 2 of 8 at uniform loads: each of the C(8, 2) = 28 pairs has probability 1/28,
    # each expert is chosen by K / E = 1/4 of the tokens.
    expected = independent_pair_shares(torch.full((8,), 0.25), 2)
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.allclose(expected[off], torch.full((56,), 1 / 28, dtype=torch.float64))
    assert torch.allclose(expected.diagonal(), torch.full((8,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("k", [2, 3])
def test_independent_pair_shares_recovers_an_enumerated_model(k: int) -> None:
    odds = [3.0, 2.0, 1.0, 1.0, 0.5, 0.25]
    sets, probability = enumerated_sets(odds, k)
    pairs = torch.zeros(6, 6, dtype=torch.float64)
    for s, p in zip(sets, probability, strict=True):
        for i in s:
            for j in s:
                pairs[i, j] += p
    # given only the inclusion rates, the fit finds the same model and its pair shares
    fitted = independent_pair_shares(pairs.diagonal().clone(), k)
    assert torch.allclose(fitted, pairs, atol=1e-9)


def test_independent_sets_have_lift_one_and_fixed_pairs_do_not() -> None:
    odds = [4.0, 3.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.2]
    sets, probability = enumerated_sets(odds, 2)
    generator = torch.Generator().manual_seed(3)
    draws = torch.multinomial(probability, 300_000, replacement=True, generator=generator)
    result = coactivation(capture_of(torch.tensor(sets)[draws]), 0)
    lift = result.lift()
    off = ~torch.eye(8, dtype=torch.bool)
    # the rarest pair (0.2 x 0.5 odds) still gets ~180 tokens: within 25%, most far closer
    assert torch.allclose(lift[off], torch.ones(56, dtype=torch.float64), atol=0.25)
    assert float((lift[off] - 1).abs().median()) < 0.05

    fixed = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]).repeat(100, 1)
    result = coactivation(capture_of(fixed), 0)
    # pair {0, 1} holds a quarter of the tokens; at uniform loads independence gives it 1/28
    assert result.lift()[0, 1] == pytest.approx(7.0)
    assert result.lift()[0, 2] == 0.0
    assert result.conditional()[0, 1] == 1.0 and result.conditional()[0, 2] == 0.0


def test_pair_counts_by_hand_and_top1_refused() -> None:
    counts = pair_counts(torch.tensor([[0, 1], [1, 2], [0, 1]]), 3)
    assert counts.tolist() == [[2, 2, 0], [2, 3, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="K >= 2"):
        coactivation(capture_of(torch.zeros(10, 1, dtype=torch.long)), 0)
