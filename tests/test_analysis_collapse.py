"""moe_lab.analysis.collapse: routing collapse, expert homogenization, representation collapse.

References: hand-derived values (uniform and one-hot loads, a rank-1 cloud), CKA's defining
formula written with Gram matrices (the kernel form of Kornblith et al. 2019, independent of the
module's feature-space form), and experts made identical on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moe_lab.analysis import (
    dead_experts,
    effective_rank,
    expert_similarity,
    gate_subspace_share,
    linear_cka,
    load_entropy,
    mean_off_diagonal,
    router_entropy,
)
from moe_lab.analysis.collapse import expert_outputs
from moe_lab.experts import StackedExperts


def gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA as HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = XX^T, L = YY^T."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n  # centring matrix
    k = h @ (x.double() @ x.double().t()) @ h
    l_ = h @ (y.double() @ y.double().t()) @ h
    return float((k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_load_measures_at_uniform_and_at_collapse() -> None:
    assert load_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(1.0)
    assert load_entropy(torch.tensor([20, 0, 0, 0])) == 0.0
    # two of four experts share everything: H = ln 2, normalized by ln 4 = 1/2
    assert load_entropy(torch.tensor([10, 10, 0, 0])) == pytest.approx(0.5)
    assert dead_experts(torch.tensor([100, 100, 100, 0])) == 1
    # mean 100, 1% of it is 1: a load of 0.5 is dead, a load of 2 is not
    assert dead_experts(torch.tensor([199.5, 0.5, 98.0, 102.0])) == 1
    assert dead_experts(torch.tensor([198.0, 2.0, 98.0, 102.0])) == 0
    assert dead_experts(torch.tensor([3, 0, 1, 0]), fraction=0.0) == 2


def test_router_entropy_uniform_and_one_hot() -> None:
    assert router_entropy(torch.full((10, 8), 1 / 8)) == pytest.approx(math.log(8))
    assert router_entropy(torch.eye(8)) == 0.0


def test_linear_cka_against_the_gram_form() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator)
    y = x @ torch.randn(6, 4, generator=generator) + 0.5 * torch.randn(50, 4, generator=generator)
    assert linear_cka(x, y) == pytest.approx(gram_cka(x, y), rel=1e-9)


def test_linear_cka_invariances_and_unrelated_inputs() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    assert linear_cka(x, 3.0 * x @ rotation + 7.0) == pytest.approx(1.0)  # rotate, scale, shift
    unrelated = torch.randn(400, 8, generator=generator)
    # two independent isotropic clouds: CKA ~ D / N = 8 / 400 on average
    assert linear_cka(x, unrelated) < 0.06


def test_identical_experts_have_similarity_one() -> None:
    torch.manual_seed(0)
    experts = StackedExperts(4, 16, 32)
    with torch.no_grad():
        for weight in (experts.w_gate, experts.w_up, experts.w_down):
            weight.copy_(weight[0].expand_as(weight))  # every expert a copy of expert 0
    x = torch.randn(300, 16)
    similarity = expert_similarity(experts, x)
    assert torch.allclose(similarity, torch.ones(4, 4, dtype=torch.float64))
    assert mean_off_diagonal(similarity) == pytest.approx(1.0)


def test_expert_similarity_entries_are_pairwise_cka() -> None:
    torch.manual_seed(1)
    experts = StackedExperts(3, 16, 32)
    x = torch.randn(200, 16)
    outputs = expert_outputs(experts, x)  # (E, N, D)
    # each expert's output is SwiGLU written out by hand with that expert's weights
    for e in range(3):
        by_hand = (F.silu(x @ experts.w_gate[e]) * (x @ experts.w_up[e])) @ experts.w_down[e]
        assert torch.allclose(outputs[e], by_hand, atol=1e-5)
    similarity = expert_similarity(experts, x)
    for i in range(3):
        for j in range(3):
            assert similarity[i, j] == pytest.approx(gram_cka(outputs[i], outputs[j]), rel=1e-9)
    assert mean_off_diagonal(similarity) < 1.0


def test_effective_rank_of_a_line_and_of_a_ball() -> None:
    generator = torch.Generator().manual_seed(2)
    line = torch.randn(500, 1, generator=generator) * torch.randn(1, 16, generator=generator)
    # float32 round-off leaves singular values ~1e-7 of the first: entropy ~1e-6
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    # the rows of +-I: equal singular values, entropy ln D, effective rank D
    plus_minus = torch.cat([torch.eye(16), -torch.eye(16)])
    assert effective_rank(plus_minus) == pytest.approx(16.0)


def test_gate_subspace_share_inside_outside_and_random() -> None:
    generator = torch.Generator().manual_seed(3)
    gate = torch.zeros(4, 16)
    gate[:, :4] = torch.randn(4, 4, generator=generator)  # spans the first 4 coordinates
    inside = torch.zeros(100, 16)
    inside[:, :4] = torch.randn(100, 4, generator=generator)
    outside = torch.zeros(100, 16)
    outside[:, 4:] = torch.randn(100, 12, generator=generator)
    assert gate_subspace_share(inside, gate) == pytest.approx(1.0)
    assert gate_subspace_share(outside, gate) == pytest.approx(0.0, abs=1e-12)
    # an isotropic cloud puts E / D = 4/16 of its variance in any 4-dimensional subspace
    cloud = torch.randn(20_000, 16, generator=generator)
    assert gate_subspace_share(cloud, torch.randn(4, 16, generator=generator)) == pytest.approx(
        0.25, abs=0.01
    )
