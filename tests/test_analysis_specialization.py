"""moe_lab.analysis.specialization against hand-built routings whose answer is known.

The references are independent of the module: entropies summed in plain Python floats, NMI
values derived by hand in comments, and routings built to copy, refine or ignore a label.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from moe_lab.analysis import RoutingCapture, beyond_token, normalized_mutual_information
from moe_lab.analysis.specialization import (
    conditional_mutual_information,
    contingency_table,
    mutual_information,
    permute_within_groups,
    specialization,
)

DOMAINS = ("arithmetic", "code", "english", "records")


def hand_capture(
    top1: torch.Tensor,
    domain: torch.Tensor,
    char_class: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    window: int = 64,
    n_experts: int = 8,
) -> RoutingCapture:
    """A capture whose first choices are ``top1`` (second choice: the next expert, mod E)."""
    length = top1.numel()
    indices = torch.stack([top1, (top1 + 1) % n_experts], dim=1)  # (L, 2)
    probs = torch.full((length, n_experts), 1.0 / n_experts)
    return RoutingCapture(
        tokens=tokens if tokens is not None else torch.zeros(length, dtype=torch.long),
        domain=domain,
        char_class=char_class if char_class is not None else torch.zeros(length, dtype=torch.long),
        position=torch.arange(length) % window,
        indices={0: indices},
        weights={0: torch.full((length, 2), 0.5)},
        probs={0: probs},
        domain_names=DOMAINS,
    )


def python_mi(pairs: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(I, H(X), H(Y)) in nats by plain counting: the independent reference."""
    n = len(pairs)
    joint, xs, ys = Counter(pairs), Counter(x for x, _ in pairs), Counter(y for _, y in pairs)

    def entropy(counter):
        return -sum(c / n * math.log(c / n) for c in counter.values())

    hx, hy, hxy = entropy(xs), entropy(ys), entropy(joint)
    return hx + hy - hxy, hx, hy


def test_nmi_of_a_small_table_by_hand() -> None:
    # p = [[.5, .25], [0, .25]]: H(X) = H(.75, .25) = 0.5623, H(Y) = ln 2 = 0.6931,
    # H(X, Y) = 3 * .25 ln 4... = -(.5 ln .5 + 2 * .25 ln .25) = 1.0397, I = 0.2158,
    # NMI = 2 I / (H(X) + H(Y)) = 0.3438.
    table = torch.tensor([[2, 1], [0, 1]])
    h_x = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_y = math.log(2)
    h_xy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    expected = 2 * (h_x + h_y - h_xy) / (h_x + h_y)
    assert math.isclose(float(normalized_mutual_information(table)), expected, rel_tol=1e-12)
    assert math.isclose(expected, 0.3438, abs_tol=1e-4)


def test_mutual_information_matches_plain_counting() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (500,), generator=generator)
    y = (x + torch.randint(0, 3, (500,), generator=generator)) % 4
    info, hx, hy = python_mi(list(zip(x.tolist(), y.tolist(), strict=True)))
    table = contingency_table(x, y, 5, 4)
    assert math.isclose(float(mutual_information(table)), info, rel_tol=1e-9)
    assert math.isclose(float(normalized_mutual_information(table)), 2 * info / (hx + hy))


def test_routing_that_copies_the_domain_scores_one() -> None:
    domain = torch.arange(4).repeat_interleave(16).repeat(20)  # 20 windows, 16 tokens per domain
    report = specialization(hand_capture(domain.clone(), domain), 0, ("domain",))
    score = report["domain"]
    assert score.nmi == pytest.approx(1.0, abs=1e-12)
    # every resample of a copying routing still copies: the interval is the point
    assert score.interval == pytest.approx((1.0, 1.0), abs=1e-12)
    # each used expert sees one domain: lift 1 / P(domain) = 4 there, 0 elsewhere
    lift = score.lift()[:4]
    assert torch.allclose(lift, 4 * torch.eye(4, dtype=torch.float64))


def test_routing_that_refines_the_domain_is_below_one_by_the_formula() -> None:
    # Two experts per domain, chosen by coin flip: the expert determines the domain but not the
    # reverse. With uniform domains H(Y) = ln 4 and H(X) = ln 8, I = H(Y), so
    # NMI = 2 ln 4 / (ln 8 + ln 4) = 4/5.
    generator = torch.Generator().manual_seed(0)
    domain = torch.arange(4).repeat(16_000)
    expert = 2 * domain + torch.randint(0, 2, domain.shape, generator=generator)
    report = specialization(hand_capture(expert, domain), 0, ("domain",), n_bootstrap=20)
    assert report["domain"].nmi == pytest.approx(0.8, abs=1e-3)


def test_routing_independent_of_the_label_sits_at_the_shuffled_baseline() -> None:
    generator = torch.Generator().manual_seed(1)
    domain = torch.randint(0, 4, (20_480,), generator=generator)
    expert = torch.randint(0, 8, (20_480,), generator=generator)
    score = specialization(hand_capture(expert, domain), 0, ("domain",), n_shuffles=100)["domain"]
    # the estimate is one more draw from the null distribution the shuffles sample
    assert min(score.shuffled) <= score.nmi <= max(score.shuffled)
    # and the null sits near the plug-in bias: I ~ (|X|-1)(|Y|-1) / (2L) nats = 21/40960
    bias = 21 / (2 * 20_480)
    assert score.shuffled_mean == pytest.approx(2 * bias / (math.log(8) + math.log(4)), rel=0.3)


def test_paired_difference_says_which_label_explains_routing() -> None:
    generator = torch.Generator().manual_seed(2)
    domain = torch.arange(4).repeat_interleave(32).repeat(40)  # (5120,)
    char_class = torch.randint(0, 5, domain.shape, generator=generator)
    capture = hand_capture(domain.clone(), domain, char_class)
    report = specialization(capture, 0, ("domain", "char_class"))
    estimate, low, high = report.difference("domain", "char_class")
    assert low > 0.9 and low <= estimate <= high <= 1.0  # domain explains it, character class not


def test_unknown_labels_are_left_out() -> None:
    domain = torch.arange(4).repeat(64)
    domain[::2] = -1  # typed text: no domain
    expert = torch.arange(4).repeat(64)
    score = specialization(hand_capture(expert, domain), 0, ("domain",), n_bootstrap=10)["domain"]
    assert int(score.table.sum()) == 128


def test_permute_within_groups_keeps_each_groups_values() -> None:
    generator = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 6, (300,), generator=generator)
    values = torch.randint(0, 4, (300,), generator=generator)
    shuffled = permute_within_groups(values, groups, generator)
    for g in range(6):
        assert sorted(shuffled[groups == g].tolist()) == sorted(values[groups == g].tolist())
    assert not torch.equal(shuffled, values)


def test_conditional_mutual_information_by_hand() -> None:
    # Given G, X = Y exactly with Y uniform on {0, 1} inside each group: I(X; Y | G) = ln 2.
    # A second group where Y is constant adds 0, halving the average.
    given = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    y = torch.tensor([0, 1, 0, 1, 1, 1, 1, 1])
    info = conditional_mutual_information(y, y, given, 2, 2, 2)
    assert info == pytest.approx(math.log(2) / 2)


def test_beyond_token_separates_byte_routing_from_domain_routing() -> None:
    generator = torch.Generator().manual_seed(4)
    length = 40_960
    tokens = torch.randint(0, 20, (length,), generator=generator)
    domain = torch.randint(0, 4, (length,), generator=generator)
    # A byte router: the expert is a function of the byte only. Knowing the domain adds nothing.
    by_byte = beyond_token(hand_capture(tokens % 8, domain, tokens=tokens), 0)
    assert by_byte.remaining == pytest.approx(0.0, abs=1e-12) and by_byte.share == 0.0
    # A domain router: the byte leaves H(domain | byte) ~ ln 4 of routing entropy and the domain
    # explains all of it, far above the within-byte shuffles.
    by_domain = beyond_token(hand_capture(domain.clone(), domain, tokens=tokens), 0)
    assert by_domain.information > 10 * max(by_domain.shuffled)
    assert by_domain.share == pytest.approx(1.0, abs=0.02)
