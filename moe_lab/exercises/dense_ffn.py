"""Exercises of notebook 01, the dense FFN: SwiGLU from raw tensors, its counts, its split into
experts.

Taught in: notebooks/01_dense_ffn.ipynb (exercises at the end).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from moe_lab.dispatch import dispatch_naive
from moe_lab.exercises.core import (
    call,
    exercise,
    expect_close,
    expect_gradients,
    expect_number,
    expect_pair,
    expect_tensor,
    fail,
    gradients,
    mismatch,
)
from moe_lab.experts import StackedExperts
from moe_lab.ffn import DenseFFN
from moe_lab.routers import RoutingResult

NOTEBOOK = "01_dense_ffn"


@exercise(NOTEBOOK, against="moe_lab.DenseFFN: output shape, values and gradients")
def check_swiglu_ffn(attempt) -> int:
    """Check ``attempt(x, w_gate, w_up, w_down) -> y``, the SwiGLU FFN on raw tensors.

    ``y = (silu(x @ w_gate) * (x @ w_up)) @ w_down`` with x (N, D), w_gate and w_up (D, F),
    w_down (F, D), y (N, D); compared with ``moe_lab.DenseFFN`` carrying the same weights, and
    so are the gradients for x and all three weights. D differs from F in every case, so
    weights used the wrong way round fail at once.
    """
    sizes = [(1, 4, 8), (16, 8, 32), (7, 12, 20)]  # (N, D, F)
    for seed, (n, d, f) in enumerate(sizes):
        case = f"case {seed + 1} of {len(sizes)} (N={n}, D={d}, F={f}, seed {seed})"
        torch.manual_seed(seed)
        ffn = DenseFFN(d, f, "swiglu")
        x = torch.randn(n, d)  # (N, D)
        # nn.Linear stores (out, in): the transposes are the (in, out) matrices of the formula
        weights = {
            "w_gate": ffn.gate.weight.detach().T.clone(),  # (D, F)
            "w_up": ffn.up.weight.detach().T.clone(),  # (D, F)
            "w_down": ffn.down.weight.detach().T.clone(),  # (F, D)
        }
        leaves = {name: t.clone().requires_grad_(True) for name, t in {"x": x, **weights}.items()}
        y = call(attempt, *leaves.values(), case=case)
        expect_tensor(
            y,
            "the output",
            (n, d),
            "(N, D)",
            case,
            shape_hints={(n, f): "that is the hidden layer (N, F): multiply it by w_down"},
        )

        x_lib = x.clone().requires_grad_(True)
        expected = ffn(x_lib)  # (N, D)
        probe = torch.randn(n, d)
        (expected * probe).sum().backward()
        wg, wu, wd = weights.values()
        with torch.no_grad():
            mistakes = {
                "SiLU is applied to the up projection instead of the gate"
                " (silu(x @ w_gate) must scale x @ w_up)": ((x @ wg) * F.silu(x @ wu)) @ wd,
                "GELU replaces SiLU (that is GEGLU, another GLU variant)": (
                    F.gelu(x @ wg) * (x @ wu)
                )
                @ wd,
                "sigmoid replaces SiLU (that is the original GLU: sigmoid(a) * b; SwiGLU uses"
                " silu(a) = a * sigmoid(a))": (torch.sigmoid(x @ wg) * (x @ wu)) @ wd,
                "the gate is left out (silu(x @ w_up) @ w_down is a plain SiLU FFN)": F.silu(x @ wu)
                @ wd,
                "the up projection is left out (silu(x @ w_gate) @ w_down)": F.silu(x @ wg) @ wd,
                "the two projections are added instead of multiplied": (F.silu(x @ wg) + x @ wu)
                @ wd,
            }
        expect_close(
            y,
            expected,
            "the output",
            case,
            mistakes,
            hint="Compute hidden = silu(x @ w_gate) * (x @ w_up), then hidden @ w_down.",
        )
        expect_gradients(
            gradients(y, probe, leaves),
            {
                "x": x_lib.grad,
                "w_gate": ffn.gate.weight.grad.T,
                "w_up": ffn.up.weight.grad.T,
                "w_down": ffn.down.weight.grad.T,
            },
            case,
        )
    return len(sizes)


def _counted(d_model: int, d_ff: int, activation: str, n_tokens: int) -> tuple[int, int]:
    """Parameters of ``DenseFFN`` and the forward FLOPs torch's counter sees, on the meta device
    (shapes only, so Mixtral-sized layers cost nothing)."""
    with torch.device("meta"):
        ffn = DenseFFN(d_model, d_ff, activation)
        x = torch.empty(n_tokens, d_model)
        with FlopCounterMode(display=False) as counter:
            ffn(x)
    return sum(p.numel() for p in ffn.parameters()), counter.get_total_flops()


@exercise(
    NOTEBOOK,
    against="parameters counted on moe_lab.DenseFFN, FLOPs counted by torch's FlopCounterMode",
)
def check_ffn_counts(attempt) -> int:
    """Check ``attempt(d_model, d_ff, activation, n_tokens) -> (parameters, forward_flops)``.

    Parameters of one bias-free FFN and the FLOPs of its forward pass on ``n_tokens`` tokens,
    compared with the parameters of ``moe_lab.DenseFFN`` and the FLOPs PyTorch's
    ``FlopCounterMode`` counts when it runs (matrix products only, 2 FLOPs per multiply-add).
    """
    sizes = [
        (64, 256, "swiglu", 32),
        (64, 256, "gelu", 32),
        (10, 7, "swiglu", 3),
        (768, 3072, "gelu", 1),  # GPT-2 small's FFN
        (4096, 14336, "swiglu", 1),  # one Mixtral-8x7B expert
    ]
    for number, (d, f, activation, n) in enumerate(sizes, start=1):
        case = f"case {number} of {len(sizes)} (D={d}, F={f}, {activation}, N={n})"
        result = expect_pair(
            call(attempt, d, f, activation, n, case=case), "(parameters, forward_flops)", case
        )
        params, flops = _counted(d, f, activation, n)
        matrices = 3 if activation == "swiglu" else 2
        other = 2 if activation == "swiglu" else 3  # the other activation's matrix count
        expect_number(
            result[0],
            params,
            "the parameter count",
            case,
            integer=True,
            mistakes={
                f"{activation} is counted with {other} matrices: SwiGLU has three (gate, up,"
                " down), GELU two (up, down)": other * d * f,
                "biases are counted: the course's FFNs (and Llama's, Mixtral's) have none": params
                + f
                + d
                + (f if activation == "swiglu" else 0),
            },
            hint=f"A {activation} FFN holds {matrices} matrices of D x F weights.",
        )
        expect_number(
            result[1],
            flops,
            "the forward FLOP count",
            case,
            integer=True,
            mistakes={
                "a multiply-add counts as 1 FLOP: it is 2 (one multiply, one add), so an"
                " (N, D) @ (D, F) product costs 2·N·D·F": flops // 2,
                "forward and backward are counted together (3 x forward); this asks for the"
                " forward pass only": 3 * flops,
                f"{activation} is counted with {other} matrix products": 2 * other * n * d * f,
                "the FLOPs of one token are given: multiply by N": flops // n if n > 1 else -1,
            },
            hint=f"{matrices} products of (N, D) @ (D, F) size, 2 FLOPs per multiply-add.",
        )
    return len(sizes)


@exercise(NOTEBOOK, against="moe_lab's StackedExperts and dispatch_naive summing to DenseFFN")
def check_split_into_experts(attempt) -> int:
    """Check ``attempt(dense, n_experts) -> (w_gate, w_up, w_down)``: a SwiGLU ``DenseFFN``
    split into E experts of F/E hidden units, in ``StackedExperts``' layout.

    Shapes: w_gate and w_up (E, D, F/E), w_down (E, F/E, D); expert e holds the contiguous hidden
    units [e·F/E, (e+1)·F/E). Checked two ways: loaded into ``moe_lab.experts.StackedExperts``
    and run with ``moe_lab.dispatch.dispatch_naive`` sending every token to every expert with
    weight 1, the sum must equal the dense FFN's output; and expert e must hold exactly its
    block of hidden units.
    """
    sizes = [(8, 16, 4), (6, 24, 3), (16, 64, 8), (4, 12, 1)]  # (D, F, E)
    for seed, (d, f, e) in enumerate(sizes):
        width = f // e
        case = f"case {seed + 1} of {len(sizes)} (D={d}, F={f}, E={e}, F/E={width}, seed {seed})"
        torch.manual_seed(seed)
        dense = DenseFFN(d, f, "swiglu")
        result = call(attempt, dense, e, case=case)
        if not isinstance(result, tuple | list) or len(result) != 3:
            fail(f"{case}: expected a tuple (w_gate, w_up, w_down), got {type(result).__name__}")
        transpose_hint = (
            "nn.Linear stores its weight as (out, in); transpose it to (in, out) before splitting"
        )
        shapes = {"w_gate": ((e, d, width), "(E, D, F/E)"), "w_up": ((e, d, width), "(E, D, F/E)")}
        shapes["w_down"] = ((e, width, d), "(E, F/E, D)")
        split = {}
        for (name, (shape, dims)), tensor in zip(shapes.items(), result, strict=True):
            hints = {(e, width, d): transpose_hint} if name != "w_down" else {}
            if name == "w_down":
                hints = {(e, d, width): transpose_hint}
            split[name] = expect_tensor(tensor, name, shape, dims, case, shape_hints=hints)

        # The library's view: the E experts, each with weight 1, summed by the reference dispatch.
        experts = StackedExperts(e, d, width, "swiglu")
        with torch.no_grad():
            for name, tensor in split.items():
                getattr(experts, name).copy_(tensor)
        n_tokens = 10
        x = torch.randn(n_tokens, d)  # (N, D)
        every_expert = RoutingResult(
            indices=torch.arange(e).expand(n_tokens, -1),  # (N, E): slot e holds expert e
            weights=torch.ones(n_tokens, e),
            probs=torch.full((n_tokens, e), 1 / e),
            logits=torch.zeros(n_tokens, e),
        )
        with torch.no_grad():
            summed = dispatch_naive(x, every_expert, experts).y  # (N, D)
            expected = dense(x)
            blocks = {
                "w_gate": dense.gate.weight.T.reshape(d, e, width).transpose(0, 1),
                "w_up": dense.up.weight.T.reshape(d, e, width).transpose(0, 1),
                "w_down": dense.down.weight.T.reshape(e, width, d),  # rows are hidden units
            }
        problem = mismatch(summed, expected)
        if problem is not None:
            fail(
                f"{case}: loaded into StackedExperts, the {e} experts summed with weight 1 by"
                f" dispatch_naive do not give the dense FFN's output: {problem}."
                + _split_diagnosis(split, dense, e, width)
            )
        for name, tensor in split.items():
            for expert in range(e):
                if mismatch(tensor[expert], blocks[name][expert], atol=0, rtol=0) is not None:
                    fail(
                        f"{case}: the experts sum to the dense FFN, so the split is a valid"
                        f" partition of the hidden units, but {name}[{expert}] does not hold"
                        f" hidden units [{expert * width}, {(expert + 1) * width}): this exercise"
                        " asks for contiguous blocks, the layout of fine-grained checkpoints"
                    )
    return len(sizes)


def _split_diagnosis(split: dict, dense: DenseFFN, e: int, width: int) -> str:
    """Name the known reshape mistakes that reproduce the reader's tensors."""
    d = dense.d_model
    with torch.no_grad():
        naive_reshape = {
            "w_gate": dense.gate.weight.T.reshape(e, d, width),
            "w_up": dense.up.weight.T.reshape(e, d, width),
        }
        untransposed = {
            "w_gate": dense.gate.weight.reshape(e, d, width),
            "w_up": dense.up.weight.reshape(e, d, width),
            "w_down": dense.down.weight.reshape(e, width, d),
        }
    for name, candidate in naive_reshape.items():
        if torch.equal(split[name], candidate):
            return (
                f" Your {name} is {name}.T.reshape(E, D, F/E): a reshape reads the (D, F) matrix"
                " row by row, so each expert gets pieces of every hidden unit's column, not whole"
                " hidden units. Reshape to (D, E, F/E), then transpose to (E, D, F/E)."
            )
    for name, candidate in untransposed.items():
        if torch.equal(split[name], candidate):
            return (
                f" Your {name} is reshaped from nn.Linear's (out, in) weight without transposing"
                " it: take the (in, out) matrix (.T) first."
            )
    return (
        " Expert e must hold the same hidden units in w_gate, w_up (columns of the (D, F)"
        " matrices) and w_down (rows of the (F, D) matrix)."
    )
