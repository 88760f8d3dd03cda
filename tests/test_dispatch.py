"""Every dispatch backend against the naive loop, and capacity dropping against hand-derived cases."""

import itertools

import pytest
import torch

from moe_lab import MoEConfig, MoELayer
from moe_lab.dispatch import BACKENDS, capacity_queue, common, get_backend
from moe_lab.dispatch import sorted as sorted_dispatch
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult

FAST_BACKENDS = [name for name in BACKENDS if name != "naive"]

CASES = [
    # (router, n_experts, top_k, shared, activation, extra config)
    ("softmax_topk", 1, 1, 0, "swiglu", {}),
    ("softmax_topk", 4, 2, 0, "swiglu", {}),
    ("softmax_topk", 8, 3, 1, "gelu", {}),
    ("topk_softmax", 8, 2, 0, "swiglu", {}),
    ("noisy_topk", 6, 2, 0, "swiglu", {}),
    ("switch", 8, 1, 0, "gelu", {}),
    ("expert_choice", 4, 2, 0, "swiglu", {"capacity_factor": 1.0}),
    ("hash", 4, 1, 0, "swiglu", {}),
    ("sigmoid_bias", 8, 2, 2, "swiglu", {"routed_scaling_factor": 2.5}),
    ("softmax_topk", 4, 2, 1, "swiglu", {"expert_segments": 2, "shared_expert_gate": True}),
    ("softmax_topk", 4, 2, 0, "swiglu", {"capacity_factor": 0.5}),
    ("softmax_topk", 4, 2, 0, "gelu", {"capacity_factor": 0.75, "drop_policy": "probability"}),
]


def assert_grad_close(actual, expected, name):
    """float32 tolerance relative to the gradient's scale: the backends sum the same products in
    different orders (per chunk, per expert), so large entries differ by ~1e-6 of the maximum."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-6 * max(scale, 1.0), msg=name)


def run_backend(layer, name, x, token_ids):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    layer.dispatch = get_backend(name)
    torch.manual_seed(123)  # the same noise for noisy_topk in every backend
    out = layer(x, token_ids)
    # an arbitrary fixed upstream gradient, plus the aux loss so the router gets its gradient too
    upstream = torch.linspace(-1, 1, out.y.numel()).view_as(out.y)
    ((out.y * upstream).sum() + out.aux_loss).backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in layer.named_parameters()})
    return out, grads


@pytest.mark.parametrize(("router", "n_experts", "top_k", "shared", "activation", "extra"), CASES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_equals_naive(backend, router, n_experts, top_k, shared, activation, extra):
    cfg = MoEConfig(
        d_model=12,
        d_expert=20,
        n_experts=n_experts,
        top_k=top_k,
        router=router,
        n_shared_experts=shared,
        activation=activation,
        dispatch="naive",
        **extra,
    )
    layer = MoELayer(cfg)
    x = torch.randn(3, 17, 12)
    token_ids = torch.randint(0, 100, (3, 17))
    if backend == "grouped" and cfg.expert_width % 4:
        with pytest.raises(ValueError, match="needs expert width to be a multiple of 4"):
            run_backend(layer, backend, x, token_ids)
        return
    ref, ref_grads = run_backend(layer, "naive", x, token_ids)
    out, grads = run_backend(layer, backend, x, token_ids)
    torch.testing.assert_close(out.y, ref.y, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.dropped, ref.dropped)
    assert torch.equal(out.tokens_per_expert, ref.tokens_per_expert)
    for name, ref_grad in ref_grads.items():
        if ref_grad is None:
            assert grads[name] is None or torch.count_nonzero(grads[name]) == 0, name
            continue
        assert_grad_close(grads[name], ref_grad, name)


@pytest.mark.parametrize("backend", ["sorted", "sorted_python"])
@pytest.mark.parametrize("block_rows", [100, None])
def test_backends_agree_on_a_larger_batch_with_empty_experts(monkeypatch, block_rows, backend):
    # Many rows per expert and two experts that receive nothing; with 100-row blocks every expert
    # spans several blocks and most blocks hold the end of one expert and the start of the next.
    if block_rows is not None:
        monkeypatch.setattr(common, "BLOCK_BYTES", block_rows * 24 * 4)  # F=24, float32
    cfg = MoEConfig(d_model=16, d_expert=24, n_experts=6, top_k=2)
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.gate.weight[4:] = -10.0  # experts 4 and 5 are never chosen
    x = torch.randn(1300, 16) + 1.0
    ref, ref_grads = run_backend(layer, "naive", x, None)
    assert ref.tokens_per_expert[4:].tolist() == [0, 0]
    out, grads = run_backend(layer, backend, x, None)
    torch.testing.assert_close(out.y, ref.y, rtol=1e-5, atol=1e-5)
    for name in ref_grads:
        assert_grad_close(grads[name], ref_grads[name], name)
    assert torch.count_nonzero(grads["experts.w_up"][4:]) == 0


def test_unknown_backend_fails_loudly():
    with pytest.raises(ValueError, match="dispatch='fast' is not a registered backend"):
        MoELayer(MoEConfig(d_model=8, d_expert=16, dispatch="fast"))


@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 1), (4, 2), (8, 3)])
def test_capacity_at_e_over_k_drops_nothing_and_equals_sorted(n_experts, top_k):
    # With cf = E/K, C = ceil(N*K/E * E/K) = N: an expert can take every token, so no drops.
    cfg = MoEConfig(
        d_model=8,
        d_expert=16,
        n_experts=n_experts,
        top_k=top_k,
        dispatch="capacity",
        capacity_factor=n_experts / top_k,
    )
    layer = MoELayer(cfg)
    x = torch.randn(40, 8)
    out = layer(x)
    assert out.n_dropped == 0
    layer.dispatch = get_backend("sorted")
    cfg_sorted_out = layer(x)
    torch.testing.assert_close(out.y, cfg_sorted_out.y, rtol=1e-5, atol=1e-6)


def hand_expert(experts: StackedExperts, e: int, x: torch.Tensor) -> torch.Tensor:
    """SwiGLU expert e written out with its weight matrices, independent of the library."""
    g = x @ experts.w_gate[e]
    return (g * torch.sigmoid(g) * (x @ experts.w_up[e])) @ experts.w_down[e]


def routing_of(indices, weights, n_experts):
    indices = torch.tensor(indices)
    weights = torch.tensor(weights)
    probs = torch.full((indices.shape[0], n_experts), 1.0 / n_experts)
    return RoutingResult(indices, weights, probs, torch.zeros_like(probs))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_oversubscribed_top2_drops_exactly_the_predicted_assignments(backend):
    # N=4 tokens, E=2, K=2, cf=0.75: C = ceil(0.75 * 4 * 2 / 2) = 3.
    # Priority "position": all first choices (slot 0) in token order, then all second choices.
    #   expert 0 queue: t0.s0, t2.s0, t3.s0 (full, 3) | t1.s1 -> dropped
    #   expert 1 queue: t1.s0 | t0.s1, t2.s1 (full, 3) | t3.s1 -> dropped
    routing = routing_of(
        [[0, 1], [1, 0], [0, 1], [0, 1]],
        [[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]],
        n_experts=2,
    )
    experts = StackedExperts(2, 8, 16)
    x = torch.randn(4, 8)
    out = get_backend(backend)(x, routing, experts, capacity=3, drop_policy="position")
    expected_dropped = torch.tensor([[False, False], [False, True], [False, False], [False, True]])
    assert torch.equal(out.dropped, expected_dropped)
    with torch.no_grad():
        expected = torch.stack(
            [
                0.6 * hand_expert(experts, 0, x[0]) + 0.4 * hand_expert(experts, 1, x[0]),
                0.7 * hand_expert(experts, 1, x[1]),  # its second choice (expert 0) got nothing
                0.8 * hand_expert(experts, 0, x[2]) + 0.2 * hand_expert(experts, 1, x[2]),
                0.9 * hand_expert(experts, 0, x[3]),
            ]
        )
    torch.testing.assert_close(out.y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_probability_priority_keeps_the_highest_weights(backend):
    # Five tokens want expert 0 (C = 3): by weight 0.95 (t3) > 0.9 (t0) > 0.7 (t2) > 0.6 > 0.5,
    # so t1 and t4 are dropped. By position t3 and t4 would have been dropped instead.
    routing = routing_of(
        [[0], [0], [0], [0], [0], [1]], [[0.9], [0.5], [0.7], [0.95], [0.6], [0.8]], 2
    )
    experts = StackedExperts(2, 8, 16)
    x = torch.randn(6, 8)
    by_weight = get_backend(backend)(x, routing, experts, capacity=3, drop_policy="probability")
    by_position = get_backend(backend)(x, routing, experts, capacity=3, drop_policy="position")
    assert torch.nonzero(by_weight.dropped[:, 0]).squeeze(-1).tolist() == [1, 4]
    assert torch.nonzero(by_position.dropped[:, 0]).squeeze(-1).tolist() == [3, 4]
    # a dropped assignment gets exactly zero expert output (the token only rides the residual)
    assert torch.count_nonzero(by_weight.y[[1, 4]]) == 0
    with torch.no_grad():
        torch.testing.assert_close(by_weight.y[3], 0.95 * hand_expert(experts, 0, x[3]))


def test_capacity_queue_ranks_by_priority():
    routing = routing_of([[1], [0], [1], [1]], [[0.1], [0.2], [0.9], [0.5]], 2)
    keep, position = capacity_queue(routing, capacity=2, drop_policy="probability")
    # expert 1 queue by weight: t2 (0), t3 (1), t0 (2 -> beyond C=2)
    assert position[:, 0].tolist() == [2, 0, 0, 1]
    assert keep[:, 0].tolist() == [False, True, True, True]


def test_layer_output_depends_on_batch_mates_only_under_capacity():
    torch.manual_seed(1)
    seq_a, seq_b = torch.randn(1, 16, 8), torch.randn(1, 16, 8)
    for cf, should_change in ((None, False), (0.5, True)):
        layer = MoELayer(
            MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2, capacity_factor=cf)
        )
        alone = layer(seq_a).y
        together = layer(torch.cat([seq_b, seq_a])).y[1:]
        changed = not torch.allclose(alone, together, atol=1e-6)
        assert changed == should_change, cf


def test_grid_of_shapes_sorted_equals_naive_forward():
    for n_experts, top_k, n_tokens in itertools.product((2, 5), (1, 2), (1, 7, 64)):
        layer = MoELayer(
            MoEConfig(d_model=8, d_expert=12, n_experts=n_experts, top_k=top_k, dispatch="naive")
        )
        x = torch.randn(n_tokens, 8)
        ref = layer(x).y
        layer.dispatch = get_backend("sorted")
        torch.testing.assert_close(layer(x).y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_grouped_on_cuda_bf16_matches_naive():
    layer = MoELayer(MoEConfig(d_model=64, d_expert=128, n_experts=8, top_k=2, dispatch="naive"))
    layer = layer.to("cuda", torch.bfloat16)
    x = torch.randn(256, 64, device="cuda", dtype=torch.bfloat16)
    ref = layer(x).y.float()
    layer.dispatch = get_backend("grouped")
    torch.testing.assert_close(layer(x).y.float(), ref, rtol=2e-2, atol=2e-2)


def test_capacity_lets_a_later_token_change_an_earlier_one():
    # E=2, K=2, C=1, position priority: first choices claim slots before second choices.
    # t1 picking expert 1 first takes expert 1's only slot, so t0's second choice (expert 1) is
    # dropped; when t1 picks expert 0 first instead, t0 keeps its second choice. t0 is earlier
    # in the sequence, so in a decoder this is a leak from the future.
    experts = StackedExperts(2, 8, 16)
    x = torch.randn(2, 8)
    weights = [[0.6, 0.4], [0.7, 0.3]]
    t1_prefers_1 = routing_of([[0, 1], [1, 0]], weights, 2)
    t1_prefers_0 = routing_of([[0, 1], [0, 1]], weights, 2)
    a = get_backend("sorted")(x, t1_prefers_1, experts, capacity=1)
    b = get_backend("sorted")(x, t1_prefers_0, experts, capacity=1)
    assert a.dropped[0].tolist() == [False, True] and b.dropped[0].tolist() == [False, False]
    assert not torch.allclose(a.y[0], b.y[0])


@pytest.mark.parametrize("block_rows", [1, 3, 64, 1000])
def test_row_blocks_cover_every_row_once_in_expert_segments(block_rows):
    offsets = [0, 5, 5, 12, 40, 41, 41]  # experts of 5, 0, 7, 28, 1, 0 rows
    seen, first_of = [], {}
    for start, end, segments in sorted_dispatch.row_blocks(offsets, block_rows):
        assert 0 < end - start <= block_rows
        assert segments[0][1] == start and segments[-1][2] == end
        for expert, s, t, first in segments:
            assert offsets[expert] <= s < t <= offsets[expert + 1]  # inside one expert
            assert first == (s == offsets[expert])
            first_of.setdefault(expert, s)
            seen.extend(range(s, t))
    assert seen == list(range(offsets[-1]))  # every row once, in order
    assert first_of == {0: 0, 2: 5, 3: 12, 4: 40}  # empty experts get no segment


def test_sort_by_expert_against_a_python_sort():
    # 4 tokens, K = 2, E = 3; slot (n, k) has id n*K + k. Token 2's second slot is dropped.
    indices = torch.tensor([[2, 0], [0, 1], [2, 1], [0, 2]])
    keep = torch.ones(4, 2, dtype=torch.bool)
    keep[2, 1] = False
    routing = RoutingResult(indices, torch.rand(4, 2), torch.rand(4, 3), torch.rand(4, 3))
    # experts of the slots 0..7: 2 0 0 1 2 1 0 2; dropping slot 5 (expert 1) leaves 3, 1, 3
    for mask, offsets in ((None, [0, 3, 5, 8]), (keep, [0, 3, 4, 7])):
        order = common.sort_by_expert(routing, mask)
        slots = [s for s in range(8) if mask is None or mask.view(-1)[s]]
        # a stable sort by expert, by hand: slot ids grouped by expert, in slot order
        expected = sorted(slots, key=lambda s: indices.view(-1)[s].item())
        assert order.slot_index.tolist() == expected
        assert order.token_index.tolist() == [s // 2 for s in expected]
        assert order.counts == [
            sum(indices.view(-1)[s].item() == e for s in slots) for e in range(3)
        ]
        assert order.offsets == offsets
        m = len(expected)
        assert order.inverse.tolist() == [
            expected.index(s) if s in expected else m for s in range(8)
        ]


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_combine_sorted_against_a_loop(top_k):
    n_tokens, d_model = 5, 4
    n_slots = n_tokens * top_k
    rows = torch.randn(n_slots - 1, d_model)  # one slot is dropped: M = N*K - 1 rows
    rows_padded = torch.cat([rows, torch.zeros(1, d_model)])  # (M+1, D), row M reads as zero
    inverse = torch.randperm(n_slots)  # slot -> sorted row; the slot given row M is the dropped one
    weights = torch.rand(n_tokens, top_k, requires_grad=True)
    y = common.combine_sorted(rows_padded, inverse, top_k, weights)
    plain = common.combine_sorted(rows_padded, inverse, top_k)
    y_loop, plain_loop = torch.zeros(n_tokens, d_model), torch.zeros(n_tokens, d_model)
    for n in range(n_tokens):
        for k in range(top_k):
            row = rows_padded[inverse[n * top_k + k]]
            y_loop[n] += weights[n, k].detach() * row
            plain_loop[n] += row
    torch.testing.assert_close(y, y_loop)
    torch.testing.assert_close(plain, plain_loop)
    # the weights' gradient: dL/dw[n, k] = <dL/dy[n], row of slot (n, k)>, so 0 for the dropped slot
    upstream = torch.randn(n_tokens, d_model)
    y.backward(upstream)
    expected = torch.stack(
        [
            torch.stack([upstream[n] @ rows_padded[inverse[n * top_k + k]] for k in range(top_k)])
            for n in range(n_tokens)
        ]
    )
    torch.testing.assert_close(weights.grad, expected)
    assert weights.grad.view(-1)[inverse.tolist().index(n_slots - 1)] == 0
