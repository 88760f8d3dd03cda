"""BufferPool: memory is reused only when nothing else holds it, so reuse never shows as aliasing.

The sorted backend takes its weight gradients from the pool; these tests check that a training
loop gets the naive loop's gradients step after step while the pool recycles the memory, and
that every way a reader can keep a gradient (a reference, accumulation, autograd.grad) keeps it
intact.
"""

import copy

import pytest
import torch

from moe_lab import MoEConfig, MoELayer
from moe_lab import buffers as buffers_module
from moe_lab.buffers import BufferPool
from moe_lab.dispatch import get_backend


@pytest.fixture
def pool_everything(monkeypatch):
    """Pool tensors of any size, so tiny test layers exercise the pooled path."""
    monkeypatch.setattr(buffers_module, "MIN_POOLED_BYTES", 0)


def test_free_buffer_is_reused(pool_everything):
    pool = BufferPool()
    first = pool.empty("a", (8, 16), torch.float32)
    pointer = first.data_ptr()
    del first
    again = pool.empty("a", (4, 16), torch.float32)  # smaller fits in the same memory
    assert again.data_ptr() == pointer and again.shape == (4, 16)


def test_held_buffer_is_not_handed_out_again(pool_everything):
    pool = BufferPool()
    held = pool.empty("a", (8, 16), torch.float32).fill_(1.0)
    other = pool.empty("a", (8, 16), torch.float32).fill_(2.0)
    assert held.data_ptr() != other.data_ptr()
    assert bool((held == 1.0).all())  # writing the new buffer did not touch the held one


def test_views_count_as_holders(pool_everything):
    pool = BufferPool()
    row = pool.empty("a", (8, 16), torch.float32)[3]  # only a view of one row survives
    assert pool.empty("a", (8, 16), torch.float32).data_ptr() != row.data_ptr() - 3 * 16 * 4


def test_small_and_mismatched_requests_are_not_pooled():
    pool = BufferPool()
    pool.empty("a", (4, 4), torch.float32)  # 64 bytes: malloc's business
    assert pool.nbytes() == 0
    big = (buffers_module.MIN_POOLED_BYTES // 4,)
    pointer = pool.empty("b", big, torch.float32).data_ptr()
    assert pool.nbytes() == buffers_module.MIN_POOLED_BYTES
    assert pool.empty("b", big, torch.float64).data_ptr() != pointer  # dtype changed
    pool.clear()
    assert pool.nbytes() == 0


def make_pair(seed=0):
    """A sorted-backend layer and a naive copy with the same weights."""
    torch.manual_seed(seed)
    cfg = MoEConfig(d_model=8, d_expert=12, n_experts=4, top_k=2, dispatch="sorted")
    fast = MoELayer(cfg)
    reference = copy.deepcopy(fast)
    reference.dispatch = get_backend("naive")
    return fast, reference


def loss(layer, x):
    out = layer(x)
    return (out.y * torch.linspace(-1, 1, out.y.numel()).view_as(out.y)).sum()


def expert_grads(layer):
    e = layer.experts
    return {"w_gate": e.w_gate.grad, "w_up": e.w_up.grad, "w_down": e.w_down.grad}


def test_training_loop_reuses_gradient_memory_and_stays_exact(pool_everything):
    fast, reference = make_pair()
    pointers = []
    for step in range(3):
        x = torch.randn(24, 8, generator=torch.Generator().manual_seed(step))
        for layer in (fast, reference):
            layer.zero_grad(set_to_none=True)
            loss(layer, x).backward()
        pointers.append(fast.experts.w_up.grad.data_ptr())
        for name, expected in expert_grads(reference).items():
            torch.testing.assert_close(expert_grads(fast)[name], expected, msg=name)
    assert len(set(pointers)) == 1  # the same memory every step: no fresh allocation


def test_a_kept_gradient_is_never_overwritten(pool_everything):
    fast, _ = make_pair()
    loss(fast, torch.randn(24, 8)).backward()
    kept = fast.experts.w_up.grad
    snapshot = kept.clone()
    fast.zero_grad(set_to_none=True)
    loss(fast, torch.randn(24, 8)).backward()
    assert fast.experts.w_up.grad.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept, snapshot, rtol=0, atol=0)


def test_gradients_accumulate_across_backwards(pool_everything):
    fast, reference = make_pair()
    for step in range(2):  # two micro-batches, no zeroing in between
        x = torch.randn(24, 8, generator=torch.Generator().manual_seed(step))
        loss(fast, x).backward()
        loss(reference, x).backward()
    for name, expected in expert_grads(reference).items():
        torch.testing.assert_close(expert_grads(fast)[name], expected, msg=name)


def test_autograd_grad_results_do_not_alias(pool_everything):
    fast, reference = make_pair()
    x1, x2 = torch.randn(24, 8), torch.randn(24, 8)
    (g1,) = torch.autograd.grad(loss(fast, x1), [fast.experts.w_down])
    (g2,) = torch.autograd.grad(loss(fast, x2), [fast.experts.w_down])
    (r1,) = torch.autograd.grad(loss(reference, x1), [reference.experts.w_down])
    (r2,) = torch.autograd.grad(loss(reference, x2), [reference.experts.w_down])
    torch.testing.assert_close(g1, r1)
    torch.testing.assert_close(g2, r2)


def test_copies_start_with_an_empty_pool(pool_everything):
    fast, _ = make_pair()
    loss(fast, torch.randn(24, 8)).backward()
    assert fast.experts.scratch.nbytes() > 0
    assert copy.deepcopy(fast).experts.scratch.nbytes() == 0
    assert not any("scratch" in key for key in fast.state_dict())
