"""Dropless dispatch by sorting (the megablocks idea without block-sparse kernels).

Sort the kept assignments by expert, gather their rows once, run each expert's GEMMs on its
contiguous slice of rows, and un-sort with one gather that also applies the combine weights.

The autograd graph is written by hand (``SortedExpertsFunction``) because on the CPU the
obvious autograd version loses most of its time outside the matrix products:
  * Indexing the stacked weights per expert under autograd (``w_up[e]``) makes autograd
    zero-fill a full (E, D, F) gradient for every expert and add them up: E times the memory
    traffic of the weights. The backward here writes each expert's gradient slice in place.
  * Scatter-adds (``index_add``) are several times slower than gathers on the CPU: the combine
    and the input gradient use the inverse permutation instead (``common.combine_sorted``).
  * The backward's (rows, F) temporaries are computed in blocks of about 2 MB (``row_blocks``):
    a large expert's rows span several blocks, so the temporaries stay in cache; small experts
    share one block, so the element-wise work is one operator call for all of them.
  * Every large buffer (weight gradients, saved activations, temporaries) comes from the
    experts' ``BufferPool``: reused between steps once nothing holds it, instead of
    page-faulting fresh memory in every call; an MoE layer's weight gradients alone are E
    times a dense layer's (see ``moe_lab.buffers``).

On CPU float32/float64 tensors ``dispatch_sorted`` runs this Function's C++ twin
(``moe_lab/csrc/sorted_experts.cpp`` via ``sorted_cpp``): the same steps in one operator call per
direction, the experts in parallel. This file is the readable version and the twin's test
reference; ``dispatch_sorted_python`` (backend ``sorted_python``) always runs it.

Reference: Gale et al. 2022, "MegaBlocks: Efficient Sparse Training with Mixture-of-Experts".
"""

from __future__ import annotations

import torch

from moe_lab.dispatch.common import (
    DispatchOutput,
    block_rows_for,
    combine_sorted,
    expert_step_buffers,
    kept_assignments,
    sort_by_expert,
)
from moe_lab.dispatch.sorted_cpp import SortedExpertsCppFunction, cpp_kernels_apply
from moe_lab.experts import StackedExperts
from moe_lab.routers import RoutingResult

_silu = torch.ops.aten.silu.out
_gelu = torch.ops.aten.gelu.out
_silu_backward = torch.ops.aten.silu_backward.grad_input
_gelu_backward = torch.ops.aten.gelu_backward.grad_input


def row_blocks(offsets: list[int], block_rows: int):
    """Consecutive blocks of sorted rows, each with the experts' segments inside it.

    Yields ``(start, end, segments)`` with ``segments`` a list of ``(expert, seg_start, seg_end,
    first)``; ``first`` marks the segment that begins the expert's rows. Element-wise work runs
    once per block, the matrix products once per segment: small experts share one block (few
    operator calls), a large expert spans several (temporaries stay in cache).
    """
    n_experts, n_rows = len(offsets) - 1, offsets[-1]
    expert = 0
    for start in range(0, n_rows, block_rows):
        end = min(start + block_rows, n_rows)
        segments = []
        while expert < n_experts and offsets[expert] < end:
            seg_start, seg_end = max(start, offsets[expert]), min(end, offsets[expert + 1])
            if seg_end > seg_start:
                segments.append((expert, seg_start, seg_end, seg_start == offsets[expert]))
            if offsets[expert + 1] > end:
                break  # this expert continues in the next block
            expert += 1
        yield start, end, segments


def _matmul_into(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """target = a @ b on an expert's first chunk, target += a @ b on the next ones."""
    if first:
        torch.mm(a, b, out=target)
    else:
        target.addmm_(a, b)


class SortedExpertsFunction(torch.autograd.Function):
    """y[n] = sum_k w[n,k] expert_{i[n,k]}(x[n]) over rows sorted by expert, with a hand backward.

    Shape: x (N, D), token_index (M,), slot_index (M,), weights (N, K), inverse (N*K,),
    w_gate/w_up (E, D, F), w_down (E, F, D) -> y (N, D). ``w_gate`` is None for GELU experts.
    ``pool`` (a ``BufferPool``) supplies every large buffer. The forward keeps what the
    backward needs (the gate and up projections, the activation and the hidden layer: what
    autograd would keep for a dense SwiGLU), so the backward recomputes nothing.
    """

    @staticmethod
    def forward(
        ctx, x, token_index, slot_index, weights, inverse, w_gate, w_up, w_down, offsets, pool
    ):
        n_rows, d_model, d_expert = token_index.shape[0], x.shape[1], w_up.shape[-1]

        def buffer(name, *shape):
            return pool.empty(name, shape, x.dtype, x.device)

        swiglu = w_gate is not None
        rows, gate, act, up, hidden, out = expert_step_buffers(pool, x, n_rows, d_expert, swiglu)
        torch.index_select(x, 0, token_index, out=rows)  # (M, D)
        # per-expert views made by one operator each (split/unbind), not one slice per expert
        w_up_e, w_down_e = w_up.unbind(0), w_down.unbind(0)  # E x (D, F), E x (F, D)
        w_gate_e = w_gate.unbind(0) if swiglu else None
        for start, end, segments in row_blocks(offsets, block_rows_for(d_expert, x.element_size())):
            sizes = [e - s for _, s, e, _ in segments]
            rows_p, up_p, out_p = (t[start:end].split(sizes) for t in (rows, up, out))
            hidden_p = hidden[start:end].split(sizes)
            gate_p = gate[start:end].split(sizes) if swiglu else None
            for i, (expert, _, _, _) in enumerate(segments):
                torch.mm(rows_p[i], w_up_e[expert], out=up_p[i])  # (rows, D) @ (D, F)
                if swiglu:
                    torch.mm(rows_p[i], w_gate_e[expert], out=gate_p[i])
            if swiglu:
                _silu(gate[start:end], out=act[start:end])
                torch.mul(act[start:end], up[start:end], out=hidden[start:end])  # SwiGLU
            else:
                _gelu(up[start:end], out=hidden[start:end])
            for i, (expert, _, _, _) in enumerate(segments):
                torch.mm(hidden_p[i], w_down_e[expert], out=out_p[i])  # (rows, F) @ (F, D)
        out[n_rows].zero_()  # row M: what dropped slots read
        top_k = weights.shape[1]
        gathered = buffer("gathered", inverse.shape[0], d_model)  # (N*K, D)
        y = combine_sorted(out, inverse, top_k, weights, gathered)  # (N, D)
        saved = (rows, token_index, slot_index, weights, inverse, w_gate, w_up, w_down)
        ctx.save_for_backward(*saved, gate, act, up, hidden, out)
        ctx.offsets, ctx.pool = offsets, pool
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        rows, token_index, slot_index, weights, inverse = ctx.saved_tensors[:5]
        w_gate, w_up, w_down, gate, act, up, hidden, out = ctx.saved_tensors[5:]
        need_x, _, _, need_weights, _, need_gate, need_up, need_down, _, _ = ctx.needs_input_grad
        n_rows, d_model = rows.shape
        d_expert, top_k = up.shape[1], weights.shape[1]

        def buffer(name, *shape):
            return ctx.pool.empty(name, shape, rows.dtype, rows.device)

        def weight_grad(name, weight, needed):  # (E, D, F) or (E, F, D)
            return buffer(name, *weight.shape) if weight is not None and needed else None

        grad_out = torch.index_select(  # (M, D): dL/dy of each sorted row's token
            grad_y.contiguous(), 0, token_index, out=buffer("grad_out", n_rows, d_model)
        )
        grad_weights = None
        if need_weights:  # dL/dw[n, k] = <dL/dy[n], out[row of slot (n, k)]>, 0 where dropped
            per_row = torch.cat([(grad_out * out[:n_rows]).sum(-1), grad_out.new_zeros(1)])
            grad_weights = per_row.index_select(0, inverse).view(weights.shape)  # (N, K)
        grad_out.mul_(weights.reshape(-1).index_select(0, slot_index).unsqueeze(-1))  # (M, D)
        grad_w_gate = weight_grad("grad_w_gate", w_gate, need_gate)
        grad_w_up = weight_grad("grad_w_up", w_up, need_up)
        grad_w_down = weight_grad("grad_w_down", w_down, need_down)
        grad_rows = buffer("grad_rows", n_rows + 1, d_model) if need_x else None  # (M+1, D)
        block_rows = block_rows_for(d_expert, rows.element_size())
        block = min(n_rows, block_rows)
        grad_hidden = buffer("grad_hidden", block, d_expert)  # (block, F) temporaries
        grad_up_block = buffer("grad_up", block, d_expert)
        grad_gate_block = buffer("grad_gate", block, d_expert) if gate is not None else None

        # per-expert views made by one operator each (split/unbind), not one slice per expert
        w_up_t, w_down_t = w_up.transpose(1, 2).unbind(0), w_down.transpose(1, 2).unbind(0)
        w_gate_t = w_gate.transpose(1, 2).unbind(0) if gate is not None else None
        grads_e = [
            g.unbind(0) if g is not None else None for g in (grad_w_gate, grad_w_up, grad_w_down)
        ]
        gw_gate_e, gw_up_e, gw_down_e = grads_e
        for start, end, segments in row_blocks(ctx.offsets, block_rows):
            n = end - start
            sizes = [e - s for _, s, e, _ in segments]
            gh, grad_up = grad_hidden[:n], grad_up_block[:n]
            hidden_tp = hidden[start:end].t().split(sizes, dim=1)  # (F, rows) per segment
            rows_tp = rows[start:end].t().split(sizes, dim=1)  # (D, rows) per segment
            grad_out_p, gh_p = grad_out[start:end].split(sizes), gh.split(sizes)
            for i, (expert, _, _, is_first) in enumerate(segments):
                if gw_down_e is not None:
                    _matmul_into(gw_down_e[expert], hidden_tp[i], grad_out_p[i], is_first)
                torch.mm(grad_out_p[i], w_down_t[expert], out=gh_p[i])  # dL/d(hidden)
            if gate is not None:
                torch.mul(gh, act[start:end], out=grad_up)  # dL/d(up) = dL/dh * silu(gate)
                gg = _silu_backward(
                    gh.mul_(up[start:end]), gate[start:end], grad_input=grad_gate_block[:n]
                )  # dL/d(gate)
                gg_p = gg.split(sizes)
            else:
                _gelu_backward(gh, up[start:end], grad_input=grad_up)
                gg_p = None
            grad_up_p = grad_up.split(sizes)
            grad_rows_p = grad_rows[start:end].split(sizes) if grad_rows is not None else None
            for i, (expert, _, _, is_first) in enumerate(segments):
                if grad_rows_p is not None:
                    torch.mm(grad_up_p[i], w_up_t[expert], out=grad_rows_p[i])
                    if gg_p is not None:
                        grad_rows_p[i].addmm_(gg_p[i], w_gate_t[expert])
                if gw_up_e is not None:
                    _matmul_into(gw_up_e[expert], rows_tp[i], grad_up_p[i], is_first)
                if gw_gate_e is not None:
                    _matmul_into(gw_gate_e[expert], rows_tp[i], gg_p[i], is_first)

        for expert in range(len(ctx.offsets) - 1):  # experts that got no rows: zero gradient
            if ctx.offsets[expert] == ctx.offsets[expert + 1]:
                for grad in (grad_w_gate, grad_w_up, grad_w_down):
                    if grad is not None:
                        grad[expert].zero_()
        grad_x = None
        if grad_rows is not None:
            grad_rows[n_rows].zero_()
            gathered = buffer("grad_gathered", inverse.shape[0], d_model) if top_k > 1 else None
            grad_x = combine_sorted(grad_rows, inverse, top_k, None, gathered)  # (N, D)
        weight_grads = (grad_w_gate, grad_w_up, grad_w_down)
        return (grad_x, None, None, grad_weights, None, *weight_grads, None, None)


def dispatch_sorted(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
    engine: str = "auto",
) -> DispatchOutput:
    """Dropless sort-by-expert dispatch (drops only if a ``capacity`` is given).

    ``engine``: ``"python"`` runs ``SortedExpertsFunction`` (readable, any device and dtype,
    CUDA bfloat16 included); ``"auto"`` runs its C++ twin on CPU float32/float64 when
    ``moe_lab.cpp_kernels`` could build it (see ``moe_lab.dispatch.sorted_cpp``), the Python
    version otherwise.

    Host synchronizations on a GPU: one, dropless. Both engines loop over the experts on the
    host, one matrix product per expert, so the host must know how many rows each expert got:
    ``sort_by_expert`` copies the E+1 offsets to the host. That copy is the price of a
    per-expert loop; the ``grouped`` backend hands the offsets to one kernel on the device and
    avoids it. A ``capacity`` adds the two of ``sort_by_expert``'s filtering.

    Shape: x (N, D) -> y (N, D)
    """
    if engine not in ("auto", "python"):
        raise ValueError(f"engine={engine!r} is unknown: choose 'auto' or 'python'")
    keep, dropped = kept_assignments(routing, capacity, drop_policy)  # (N, K) each
    # dropless token choice keeps every slot: skip the filter (and its host sync)
    order = sort_by_expert(routing, None if capacity is None and routing.mask is None else keep)
    use_cpp = engine == "auto" and cpp_kernels_apply(x)
    function = SortedExpertsCppFunction if use_cpp else SortedExpertsFunction
    y = function.apply(
        x,
        order.token_index,
        order.slot_index,
        routing.weights.to(x.dtype),
        order.inverse,
        experts.w_gate,
        experts.w_up,
        experts.w_down,
        order.offsets,
        experts.scratch,
    )
    return DispatchOutput(y=y, dropped=dropped)


def dispatch_sorted_python(
    x: torch.Tensor,
    routing: RoutingResult,
    experts: StackedExperts,
    capacity: int | None = None,
    drop_policy: str = "position",
) -> DispatchOutput:
    """``dispatch_sorted`` always in its readable Python version (the C++ kernels' reference)."""
    return dispatch_sorted(x, routing, experts, capacity, drop_policy, engine="python")
