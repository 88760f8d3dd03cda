"""Dropless dispatch by sorting (the megablocks idea without block-sparse kernels).

Sort the kept assignments by expert, gather their rows once, run each expert's GEMMs on its
contiguous slice of rows, scale by the combine weights, and un-sort with one gather.

The autograd graph is written by hand (``SortedExpertsFunction``) because on the CPU the
obvious autograd version loses most of its time outside the matrix products:
  * Indexing the stacked weights per expert under autograd (``w_up[e]``) makes autograd
    zero-fill a full (E, D, F) gradient for every expert and add them up: E times the memory
    traffic of the weights. The backward here writes each expert's gradient slice in place.
  * Scatter-adds (``index_add``) are several times slower than gathers on the CPU: the combine
    and the input gradient use the inverse permutation instead (``common.combine_sorted``).
  * The (rows, F) temporaries of the activation and of the backward are computed in chunks of
    ``CHUNK_ROWS`` rows into buffers allocated once per call, so they stay in cache and the
    allocator does not hand large blocks back and forth with the operating system.
  * The weight gradients and the saved (rows, F) activations come from the experts'
    ``BufferPool``: reused between steps once nothing holds them, instead of page-faulting
    E times a dense layer's gradient memory in afresh every backward (see ``moe_lab.buffers``).

Reference: Gale et al. 2022, "MegaBlocks: Efficient Sparse Training with Mixture-of-Experts".
"""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import (
    DispatchOutput,
    combine_sorted,
    kept_assignments,
    sort_by_expert,
)
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult

CHUNK_ROWS = 512

_silu = torch.ops.aten.silu.out
_gelu = torch.ops.aten.gelu.out
_silu_backward = torch.ops.aten.silu_backward.grad_input
_gelu_backward = torch.ops.aten.gelu_backward.grad_input


def expert_chunks(offsets: list[int], chunk_rows: int = CHUNK_ROWS):
    """(expert, start, end, first) for consecutive row chunks of every expert with rows."""
    for expert in range(len(offsets) - 1):
        for start in range(offsets[expert], offsets[expert + 1], chunk_rows):
            end = min(start + chunk_rows, offsets[expert + 1])
            yield expert, start, end, start == offsets[expert]


def _matmul_into(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """target = a @ b on an expert's first chunk, target += a @ b on the next ones."""
    if first:
        torch.mm(a, b, out=target)
    else:
        target.addmm_(a, b)


class SortedExpertsFunction(torch.autograd.Function):
    """y[n] = sum_k w[n,k] expert_{i[n,k]}(x[n]) over rows sorted by expert, with a hand backward.

    Shape: x (N, D), token_index (M,), weights (M,), inverse (N*K,), w_gate/w_up (E, D, F),
    w_down (E, F, D) -> y (N, D). ``w_gate`` is None for GELU experts. ``pool`` supplies the
    large buffers (a ``BufferPool``).
    """

    @staticmethod
    def forward(ctx, x, token_index, weights, inverse, top_k, w_gate, w_up, w_down, offsets, pool):
        rows = x.index_select(0, token_index)  # (N, D) -> (M, D)
        n_rows, d_model, d_expert = rows.shape[0], rows.shape[1], w_up.shape[-1]
        up = pool.empty("up", (n_rows, d_expert), x.dtype, x.device)  # (M, F), saved
        gate = (
            pool.empty("gate", (n_rows, d_expert), x.dtype, x.device)
            if w_gate is not None
            else None
        )  # (M, F), saved
        hidden = rows.new_empty(min(n_rows, CHUNK_ROWS), d_expert)  # (chunk, F), reused
        out = rows.new_empty(n_rows, d_model)  # (M, D): unweighted expert outputs
        for expert, start, end, _ in expert_chunks(offsets):
            h = hidden[: end - start]
            torch.mm(rows[start:end], w_up[expert], out=up[start:end])
            if gate is not None:
                torch.mm(rows[start:end], w_gate[expert], out=gate[start:end])
                _silu(gate[start:end], out=h).mul_(up[start:end])
            else:
                _gelu(up[start:end], out=h)
            torch.mm(h, w_down[expert], out=out[start:end])
        weighted = rows.new_empty(n_rows + 1, d_model)  # (M+1, D), last row: dropped slots
        torch.mul(out, weights.unsqueeze(-1), out=weighted[:n_rows])
        weighted[n_rows].zero_()
        y = combine_sorted(weighted, inverse, top_k)  # (N, D)
        ctx.save_for_backward(
            rows, token_index, weights, inverse, w_gate, w_up, w_down, gate, up, out
        )
        ctx.offsets, ctx.top_k, ctx.pool = offsets, top_k, pool
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, token_index, weights, inverse, w_gate, w_up, w_down, gate, up, out = ctx.saved_tensors
        need_x, _, need_weights, _, _, need_gate, need_up, need_down, _, _ = ctx.needs_input_grad
        n_rows, d_model = rows.shape
        grad_out = grad_y.contiguous().index_select(0, token_index)  # (M, D): dL/d(weighted row)
        grad_weights = (grad_out * out).sum(-1) if need_weights else None  # (M,)
        grad_out.mul_(weights.unsqueeze(-1))  # (M, D): dL/d(expert output row)

        def weight_grad(name, weight, needed):  # (E, D, F) or (E, F, D), pooled
            if weight is None or not needed:
                return None
            return ctx.pool.empty(name, tuple(weight.shape), weight.dtype, weight.device)

        grad_w_gate = weight_grad("grad_w_gate", w_gate, need_gate)
        grad_w_up = weight_grad("grad_w_up", w_up, need_up)
        grad_w_down = weight_grad("grad_w_down", w_down, need_down)
        grad_rows = rows.new_empty(n_rows + 1, d_model) if need_x else None  # (M+1, D)
        chunk, d_expert = min(n_rows, CHUNK_ROWS), up.shape[1]
        act = rows.new_empty(chunk, d_expert)  # silu(gate) or gelu(up)
        hidden = rows.new_empty(chunk, d_expert)  # recomputed hidden, then dL/d(up)
        grad_hidden = rows.new_empty(chunk, d_expert)
        grad_gate = rows.new_empty(chunk, d_expert) if gate is not None else None

        for expert, start, end, first in expert_chunks(ctx.offsets):
            n = end - start
            x_c, go_c, up_c = rows[start:end], grad_out[start:end], up[start:end]
            h, gh, a = hidden[:n], grad_hidden[:n], act[:n]
            if gate is not None:
                _silu(gate[start:end], out=a)
                torch.mul(a, up_c, out=h)  # hidden = silu(gate) * up
            else:
                _gelu(up_c, out=h)
            if grad_w_down is not None:
                _matmul_into(grad_w_down[expert], h.t(), go_c, first)
            torch.mm(go_c, w_down[expert].t(), out=gh)  # dL/d(hidden)
            if gate is not None:
                grad_up = torch.mul(gh, a, out=h)  # dL/d(up) = dL/dh * silu(gate)
                gg = _silu_backward(gh.mul_(up_c), gate[start:end], grad_input=grad_gate[:n])
            else:
                grad_up = _gelu_backward(gh, up_c, grad_input=h)
                gg = None
            if grad_rows is not None:
                torch.mm(grad_up, w_up[expert].t(), out=grad_rows[start:end])
                if gg is not None:
                    grad_rows[start:end].addmm_(gg, w_gate[expert].t())
            if grad_w_up is not None:
                _matmul_into(grad_w_up[expert], x_c.t(), grad_up, first)
            if grad_w_gate is not None:
                _matmul_into(grad_w_gate[expert], x_c.t(), gg, first)

        for expert in range(len(ctx.offsets) - 1):  # experts that got no rows: zero gradient
            if ctx.offsets[expert] == ctx.offsets[expert + 1]:
                for grad in (grad_w_gate, grad_w_up, grad_w_down):
                    if grad is not None:
                        grad[expert].zero_()
        grad_x = None
        if grad_rows is not None:
            grad_rows[n_rows].zero_()
            grad_x = combine_sorted(grad_rows, inverse, ctx.top_k)  # (N, D)
        weight_grads = (grad_w_gate, grad_w_up, grad_w_down)
        return (grad_x, None, grad_weights, None, None, *weight_grads, None, None)


def dispatch_sorted(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """Dropless sort-by-expert dispatch (drops only if a ``capacity`` is given).

    Shape: x (N, D) -> y (N, D)
    """
    keep, dropped = kept_assignments(routing, capacity, drop_policy)  # (N, K) each
    # dropless token choice keeps every slot: skip the filter (and its host sync)
    order = sort_by_expert(routing, None if capacity is None and routing.mask is None else keep)
    y = SortedExpertsFunction.apply(
        x,
        order.token_index,
        order.weights.to(x.dtype),
        order.inverse,
        routing.indices.shape[1],
        experts.w_gate,
        experts.w_up,
        experts.w_down,
        order.offsets,
        experts.scratch,
    )
    return DispatchOutput(y=y, dropped=dropped)
