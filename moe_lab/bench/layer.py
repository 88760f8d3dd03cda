"""``python -m moe_lab.bench layer``: MoE layer backends vs a dense FFN of the same active FLOPs.

For each shape (N tokens, D, F, E, K) it builds one ``MoELayer`` per backend (same weights) and a
dense SwiGLU FFN of width K*F, then times forward and forward+backward in one process with
interleaved repetitions, and reports ``time(dense) / time(backend)``: 1.0 means routing is free.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import torch

from moe_lab.bench.common import (
    geometric_mean,
    machine_info,
    median,
    retain_freed_memory,
    time_interleaved,
    write_result,
)
from moe_lab.config import MoEConfig
from moe_lab.dispatch import grouped_mm_available
from moe_lab.ffn import DenseFFN
from moe_lab.moe_layer import MoELayer

HEADLINE = (4096, 512, 1024, 8, 2)  # N, D, F, E, K


@dataclass(frozen=True)
class Shape:
    n_tokens: int
    d_model: int
    d_expert: int
    n_experts: int
    top_k: int

    def label(self) -> str:
        return (
            f"N={self.n_tokens} D={self.d_model} F={self.d_expert}"
            f" E={self.n_experts} K={self.top_k}"
        )


def grid(quick: bool) -> list[Shape]:
    """The headline shape, then the N x E x K grid whose geometric mean is the summary."""
    shapes = [Shape(*HEADLINE)]
    for n, e, k in itertools.product((512, 4096), (8, 32), (1, 2)):
        shape = Shape(n, 512, 1024, e, k)
        if shape not in shapes:
            shapes.append(shape)
    if quick:  # headline plus the two extremes of the grid
        shapes = [
            s
            for s in shapes
            if s == Shape(*HEADLINE)
            or (s.n_tokens, s.n_experts, s.top_k) in ((512, 32, 1), (4096, 8, 1))
        ]
    return shapes


NAIVE_MAX_EXPERTS = 8  # the reference loop's backward costs O(E^2) memory traffic: skip it above


def backends_to_time(include_naive: bool) -> list[str]:
    names = ["sorted", "sorted_python"]  # on the CPU: the C++ kernels, then their Python twin
    if grouped_mm_available():
        names.append("grouped")
    if include_naive:
        names.insert(0, "naive")
    return names


def make_step(module, x: torch.Tensor, grad: torch.Tensor, backward: bool, is_moe: bool):
    """A closure running one forward (and backward) pass; gradients are reset each time."""

    def step():
        if backward:
            for p in module.parameters():
                p.grad = None
            x.grad = None
        with torch.set_grad_enabled(backward):
            out = module(x)
            y = out.y if is_moe else out
            if backward:
                y.backward(grad)

    return step


def bench_shape(shape: Shape, repeats: int, include_naive: bool, device: str) -> dict:
    torch.manual_seed(0)
    cfg = MoEConfig(
        d_model=shape.d_model,
        d_expert=shape.d_expert,
        n_experts=shape.n_experts,
        top_k=shape.top_k,
        dispatch="sorted",
    )
    reference = MoELayer(cfg).to(device)
    layers = {}
    for name in backends_to_time(include_naive and shape.n_experts <= NAIVE_MAX_EXPERTS):
        layer = MoELayer(MoEConfig(**{**cfg.__dict__, "dispatch": name})).to(device)
        layer.load_state_dict(reference.state_dict())
        layers[name] = layer
    dense = DenseFFN(shape.d_model, shape.top_k * shape.d_expert).to(device)
    x = torch.randn(shape.n_tokens, shape.d_model, device=device, requires_grad=True)
    grad = torch.randn(shape.n_tokens, shape.d_model, device=device)
    result = {"shape": shape.__dict__, "seconds": {}, "ratio_dense_over_backend": {}}
    for mode, backward in (("forward", False), ("forward_backward", True)):
        candidates = {"dense": make_step(dense, x, grad, backward, is_moe=False)}
        for name, layer in layers.items():
            candidates[name] = make_step(layer, x, grad, backward, is_moe=True)
        times = time_interleaved(candidates, repeats=repeats, warmup=1, device=device)
        medians = {name: median(t) for name, t in times.items()}
        result["seconds"][mode] = medians
        result["ratio_dense_over_backend"][mode] = {
            name: medians["dense"] / medians[name] for name in layers
        }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 shapes, few repeats (< 1 minute)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per candidate")
    parser.add_argument("--no-naive", action="store_true", help="skip the slow reference loop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON result")
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="keep freed memory in the process (glibc mallopt), for dense and MoE alike",
    )


def run(args: argparse.Namespace) -> dict:
    repeats = args.repeats or (3 if args.quick else 5)
    retained = retain_freed_memory() if args.retain_freed_memory else False
    shapes = grid(args.quick)
    rows = []
    header = f"{'shape':<36} {'mode':<17} " + " ".join(
        f"{name:>8}" for name in backends_to_time(not args.no_naive)
    )
    print("time(dense FFN of width K*F) / time(MoE layer); 1.00 = routing is free")
    print(header)
    for shape in shapes:
        result = bench_shape(shape, repeats, not args.no_naive, args.device)
        rows.append(result)
        for mode, ratios in result["ratio_dense_over_backend"].items():
            cells = " ".join(
                f"{ratios[name]:8.2f}" if name in ratios else f"{'-':>8}"
                for name in backends_to_time(not args.no_naive)
            )
            print(f"{shape.label():<36} {mode:<17} {cells}", flush=True)
    grid_rows = [
        r
        for r in rows
        if r["shape"]["n_tokens"] in (512, 4096)
        and r["shape"]["n_experts"] in (8, 32)
        and r["shape"]["top_k"] in (1, 2)
    ]
    summary = {}
    for name in backends_to_time(include_naive=False):
        summary[name] = {
            mode: geometric_mean([r["ratio_dense_over_backend"][mode][name] for r in grid_rows])
            for mode in ("forward", "forward_backward")
        }
    headline = next(r for r in rows if tuple(r["shape"].values()) == HEADLINE)
    head_ratio = headline["ratio_dense_over_backend"]["forward_backward"]["sorted"]
    payload = {
        "benchmark": "layer",
        "machine": machine_info(args.device),
        "quick": bool(args.quick),
        "retain_freed_memory": retained,
        "repeats": repeats,
        "rows": rows,
        "geomean_ratio": summary,
        "headline_sorted_forward_backward": head_ratio,
    }
    if not args.no_write:
        path = write_result("layer", payload)
        print(f"wrote {path}")
    print(
        f"summary: sorted fwd+bwd {head_ratio:.2f}x dense at {Shape(*HEADLINE).label()};"
        f" geomean over {len(grid_rows)} shapes: sorted fwd+bwd"
        f" {summary['sorted']['forward_backward']:.2f}, fwd {summary['sorted']['forward']:.2f}"
        f" ({payload['machine']['device_name']}, {payload['machine']['torch_threads']} threads"
        + (", freed memory retained" if retained else "")
        + ")"
    )
    return payload
