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

from moe_lab.cpp_kernels import load_kernels
from moe_lab.dispatch.common import block_rows_for

KERNEL_DTYPES = (torch.float32, torch.float64)


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
        n_rows, d_model, d_expert = token_index.shape[0], x.shape[1], w_up.shape[-1]

        def buffer(name, *shape):
            return pool.empty(name, shape, x.dtype, x.device)

        swiglu = w_gate is not None
        rows = buffer("rows", n_rows, d_model)  # (M, D)
        gate = buffer("gate", n_rows, d_expert) if swiglu else None  # (M, F)
        act = buffer("act", n_rows, d_expert) if swiglu else None  # (M, F): silu(gate)
        up = buffer("up", n_rows, d_expert)  # (M, F)
        hidden = buffer("hidden", n_rows, d_expert)  # (M, F): input of the down projection
        out = buffer("out", n_rows + 1, d_model)  # (M+1, D): expert outputs, last row zero
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
        weight_grads = (grad_w_gate, grad_w_up, grad_w_down)
        return (grad_x, None, None, grad_weights, None, *weight_grads, None, None)
