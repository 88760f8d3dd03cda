"""The sorted dispatch's expert step in C++ (``moe_lab/csrc/sorted_experts.cpp``), on the CPU.

``SortedExpertsCppFunction`` has the signature, the saved tensors and the arithmetic of
``moe_lab.dispatch.sorted.SortedExpertsFunction``, the readable version; each direction is one
call of a ``torch.ops.moe_lab`` operator, which runs the experts in parallel (one expert per
thread at a time, each product on one thread). ``dispatch_sorted`` picks it for CPU float32 and
float64 inputs when ``moe_lab.cpp_kernels`` could build it.

Taught in: notebooks/02_routing.ipynb.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter

from moe_lab.cpp_kernels import load_kernels
from moe_lab.dispatch.common import block_rows_for, expert_step_buffers

KERNEL_DTYPES = (torch.float32, torch.float64)


# The operators' schemas (their C++ kernels: moe_lab/csrc/sorted_experts.cpp, same argument
# order). Defined here, at import, so that FlopCounterMode knows them before any kernel is built.
_LIBRARY = torch.library.Library("moe_lab", "FRAGMENT")
_LIBRARY.define(
    "sorted_experts_forward(Tensor x, Tensor token_index, Tensor weights, Tensor inverse, "
    "Tensor? w_gate, Tensor w_up, Tensor w_down, int[] offsets, Tensor(a!) rows, "
    "Tensor(b!)? gate, Tensor(c!)? act, Tensor(d!) up, Tensor(e!) hidden, Tensor(f!) out) "
    "-> Tensor"
)
_LIBRARY.define(
    "sorted_experts_backward(Tensor grad_y, Tensor rows, Tensor token_index, "
    "Tensor slot_index, Tensor weights, Tensor inverse, Tensor? w_gate, Tensor w_up, "
    "Tensor w_down, Tensor? gate, Tensor? act, Tensor up, Tensor hidden, Tensor out, "
    "int[] offsets, bool need_x, bool need_weights, Tensor(a!)? grad_w_gate, "
    "Tensor(b!)? grad_w_up, Tensor(c!)? grad_w_down, Tensor(d!) grad_out, "
    "Tensor(e!) grad_rows, Tensor(f!) scratch) -> Tensor[]"
)


# FlopCounterMode sees operators, not what runs inside them: without these formulas it would
# count the experts as zero FLOPs. They count the products the Python version issues
# (tests/test_cpp_kernels.py checks that), 2 FLOPs per multiply-add; arguments are shapes.
@flop_counter.register_flop_formula(torch.ops.moe_lab.sorted_experts_forward)
def _forward_flops(x, token_index, weights, inverse, w_gate, w_up, *args, **kwargs) -> int:
    n_rows, d_model, d_expert = token_index[0], x[1], w_up[-1]
    projections = 3 if w_gate is not None else 2  # (gate,) up, down
    return 2 * n_rows * d_model * d_expert * projections


@flop_counter.register_flop_formula(torch.ops.moe_lab.sorted_experts_backward)
def _backward_flops(
    grad_y, rows, token_index, slot_index, weights, inverse, w_gate, w_up, w_down,
    gate, act, up, hidden, out, offsets, need_x, need_weights,
    grad_w_gate, grad_w_up, grad_w_down, *args, **kwargs,
) -> int:  # fmt: skip
    product = 2 * rows[0] * rows[1] * up[1]  # one (M, D) x (D, F) product or its transpose
    weight_grads = sum(grad is not None for grad in (grad_w_gate, grad_w_up, grad_w_down))
    if not need_x and weight_grads == 0:
        return 0  # only the combine weights' gradient: dot products, no matrix product
    products = 1  # dL/d(hidden) = dL/d(out) @ w_down^T
    products += need_x * (2 if w_gate is not None else 1)  # dL/d(rows)
    return product * (products + weight_grads)


def cpp_kernels_apply(x: torch.Tensor) -> bool:
    """True when the C++ expert step can run on x: CPU, float32/float64, kernels built."""
    return x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and load_kernels()


class SortedExpertsCppFunction(torch.autograd.Function):
    """``SortedExpertsFunction`` with its forward and backward in C++ (same arguments).

    Shape: x (N, D), token_index (M,), slot_index (M,), weights (N, K), inverse (N*K,),
    w_gate/w_up (E, D, F), w_down (E, F, D) -> y (N, D).
    """

    @staticmethod
    def forward(
        ctx, x, token_index, slot_index, weights, inverse, w_gate, w_up, w_down, offsets, pool
    ):
        n_rows, d_expert = token_index.shape[0], w_up.shape[-1]
        buffers = expert_step_buffers(pool, x, n_rows, d_expert, w_gate is not None)
        rows, gate, act, up, hidden, out = buffers  # filled by the operator
        y = torch.ops.moe_lab.sorted_experts_forward(
            x, token_index, weights, inverse, w_gate, w_up, w_down, offsets,
            rows, gate, act, up, hidden, out,
        )  # fmt: skip
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
        d_expert = up.shape[1]

        def buffer(name, *shape):
            return ctx.pool.empty(name, shape, rows.dtype, rows.device)

        def weight_grad(name, weight, needed):  # (E, D, F) or (E, F, D)
            return buffer(name, *weight.shape) if weight is not None and needed else None

        # per thread, three (block, F) temporaries: dL/d(hidden), dL/d(up), dL/d(gate)
        block = max(1, min(n_rows, block_rows_for(d_expert, rows.element_size())))
        scratch = buffer("grad_scratch", torch.get_num_threads(), 3, block, d_expert)
        grad_x, grad_weights, grad_w_gate, grad_w_up, grad_w_down = (
            torch.ops.moe_lab.sorted_experts_backward(
                grad_y, rows, token_index, slot_index, weights, inverse, w_gate, w_up, w_down,
                gate, act, up, hidden, out, ctx.offsets, need_x, need_weights,
                weight_grad("grad_w_gate", w_gate, need_gate),
                weight_grad("grad_w_up", w_up, need_up),
                weight_grad("grad_w_down", w_down, need_down),
                buffer("grad_out", n_rows, d_model), buffer("grad_rows", n_rows + 1, d_model),
                scratch,
            )
        )  # fmt: skip
        # the operator returns an empty tensor for each gradient it was not asked for
        grad_x = grad_x if need_x else None
        grad_weights = grad_weights if need_weights else None
        weight_grads = tuple(
            grad if weight is not None and needed else None
            for grad, weight, needed in (
                (grad_w_gate, w_gate, need_gate),
                (grad_w_up, w_up, need_up),
                (grad_w_down, w_down, need_down),
            )
        )
        return (grad_x, None, None, grad_weights, None, *weight_grads, None, None)
