"""moe_lab.profiling and the ladder's counted costs: operator audits against hand-written code,
the masked and einsum rungs' FLOPs and tensors against hand formulas."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_lab import MoEConfig, MoELayer
from moe_lab.dispatch.einsum import one_hot_dispatch
from moe_lab.profiling import (
    audit_operators,
    count_cuda_syncs,
    count_full_size_slicing,
    peak_rss_increase,
)
from moe_lab.routers import RoutingResult


def test_audit_counts_operators_and_new_bytes():
    a = torch.ones(10, 10)
    with audit_operators() as audit:
        b = a * 2  # new (10, 10) float32: 400 bytes
        c = b.view(100)  # a view: no new memory
        c.add_(1)  # in place: no new memory
        d = torch.cat([a, b])  # new (20, 10): 800 bytes
    assert audit.counts["aten.mul"] == 1 and audit.counts["aten.cat"] == 1
    assert audit.counts["aten.view"] == 1 and audit.counts["aten.add_"] == 1
    assert audit.allocated_bytes == 400 + 800 and audit.largest_allocation == 800
    assert audit.n_host_syncs == 0 and d.shape == (20, 10)
    assert "4 operator calls" in audit.summary()


def test_audit_restores_tolist():
    original = torch.Tensor.tolist
    with audit_operators():
        pass
    assert torch.Tensor.tolist is original


def test_full_size_slicing_counts_each_indexed_expert_once():
    """A hand-written loop that indexes w[e] for 5 of 6 experts holds 5 zero-filling nodes on w's
    shape; unbind and one batched product hold none; a slice of another tensor is not counted,
    even one with as many elements as w; the backward writes w's gradient for those 5 only."""
    w = torch.randn(6, 4, 3, requires_grad=True)  # (E, D, F)
    small = torch.randn(5, 4, requires_grad=True)
    same_numel = torch.randn(8, 9, requires_grad=True)  # 72 elements, as w has
    x = torch.randn(4)
    indexed = sum(x @ w[e] for e in range(5)) + small[0].sum() + same_numel[0].sum()
    assert count_full_size_slicing(indexed, {(6, 4, 3)}) == 5
    assert count_full_size_slicing(indexed, {(6, 4, 3), (5, 4)}) == 6
    unbound = sum(x @ w_e for w_e in w.unbind(0))
    assert count_full_size_slicing(unbound, {(6, 4, 3)}) == 0
    batched = torch.einsum("d,edf->ef", x, w).sum()
    assert count_full_size_slicing(batched, {(6, 4, 3)}) == 0
    # gather and take save the whole tensor rather than its sizes: counted as well
    gathered = w.gather(0, torch.zeros(1, 4, 3, dtype=torch.long)).sum() + w.take(torch.tensor([0]))
    assert count_full_size_slicing(gathered.sum(), {(6, 4, 3)}) == 2
    indexed.sum().backward()
    assert torch.equal(w.grad[5], torch.zeros(4, 3)) and w.grad[:5].abs().sum() > 0


def test_count_cuda_syncs_refuses_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: tests/test_gpu.py covers it")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        count_cuda_syncs(lambda: None)


def test_peak_rss_increase_sees_a_large_tensor():
    size = 64 * 2**20  # 64 MiB, written so its pages are resident
    rise = peak_rss_increase(lambda: torch.ones(size // 4))
    if rise is None:
        pytest.skip("no /proc/self/clear_refs on this system")
    assert rise >= 0.9 * size


def layer_flops(dispatch, n_tokens=64, d=16, f=32, e=8, k=2, **extra):
    torch.manual_seed(0)
    layer = MoELayer(
        MoEConfig(d_model=d, d_expert=f, n_experts=e, top_k=k, dispatch=dispatch, **extra)
    )
    x = torch.randn(n_tokens, d)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops(), layer


def test_masked_rung_does_e_over_k_times_the_expert_flops():
    router = 2 * 64 * 16 * 8  # 2*N*D*E
    sparse, _ = layer_flops("sorted")
    masked, _ = layer_flops("masked")
    # sparse: 2*N*K*D*F*3 (three projections); masked: every expert on every token, 2*N*E*D*F*3
    assert sparse - router == 2 * 64 * 2 * 16 * 32 * 3
    assert masked - router == 2 * 64 * 8 * 16 * 32 * 3 == 4 * (sparse - router)


def test_einsum_rung_flops_and_one_hot_tensors_match_gshard():
    flops, layer = layer_flops("einsum", capacity_factor=1.0)
    c = layer.config.capacity(64)  # ceil(1.0 * 64 * 2 / 8) = 16
    assert c == 16
    # router + experts on E*C rows + two einsums of 2*N*E*C*D each
    assert flops == 2 * 64 * 16 * 8 + 2 * 8 * c * 16 * 32 * 3 + 2 * (2 * 64 * 8 * c * 16)


def test_one_hot_dispatch_by_hand():
    # 3 tokens, E=2, K=1, C=1, position priority: t0 and t1 choose expert 0, t2 expert 1.
    # Expert 0's only slot goes to t0 (earlier token); t1 is dropped; t2 takes expert 1's slot.
    routing = RoutingResult(
        indices=torch.tensor([[0], [0], [1]]),
        weights=torch.tensor([[0.7], [0.9], [0.4]]),
        probs=torch.full((3, 2), 0.5),
        logits=torch.zeros(3, 2),
    )
    dispatch, combine, keep = one_hot_dispatch(routing, capacity=1, drop_policy="position",
                                               dtype=torch.float32)  # fmt: skip
    assert keep.view(-1).tolist() == [True, False, True]
    assert dispatch.shape == (3, 2, 1)
    assert dispatch[:, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(combine[:, :, 0], torch.tensor([[0.7, 0.0], [0.0, 0.0], [0.0, 0.4]]))


def test_einsum_rung_largest_tensor_is_the_dispatch_tensor():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(d_model=16, d_expert=32, n_experts=8, top_k=2, dispatch="einsum",
                               capacity_factor=1.0, validate_inputs=False))  # fmt: skip
    x = torch.randn(256, 16)
    with torch.no_grad(), audit_operators() as audit:
        layer(x)
    # (N, E, C) float32 = 256 * 8 * 64 * 4 bytes, larger than any (N, D) or (E, C, F) tensor
    assert audit.largest_allocation == 256 * 8 * 64 * 4
    assert audit.n_host_syncs == 0  # a given capacity: static shapes, no one_hot range check
