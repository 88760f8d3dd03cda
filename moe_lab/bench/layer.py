"""``python -m moe_lab.bench layer``: MoE layer backends vs a dense FFN of the same active FLOPs.

For each shape (N tokens, D, F, E, K) it builds one ``MoELayer`` per backend (same weights) and a
dense SwiGLU FFN of width K*F, then times forward and forward+backward in one process with
interleaved repetitions, and reports ``time(dense) / time(backend)``: 1.0 means routing is free.

``--device cuda --dtype bfloat16`` runs the same comparison on a GPU (the ``sorted`` backend is
its Python engine there, the C++ kernels being CPU-only) and records, per backend, how many host
synchronizations one forward makes (``torch.cuda.set_sync_debug_mode``). The JSON result names
the device (``machine.device_name``) and the dtype.
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def backends_to_time(include_naive: bool, device: str = "cpu") -> list[str]:
    # on the CPU: the C++ kernels, then their Python twin; elsewhere "sorted" is the Python one
    names = ["sorted", "sorted_python"] if torch.device(device).type == "cpu" else ["sorted"]
    if grouped_mm_available():
        names.append("grouped")
    if include_naive:
        names.insert(0, "naive")
    return names


def runs(layer, x: torch.Tensor) -> str | None:
    """None if the layer runs on x; otherwise the error, in one line (grouped_mm on an old GPU)."""
    try:
        with torch.no_grad():
            layer(x)
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None


def cuda_syncs_per_forward(layer, x: torch.Tensor) -> int | None:
    """Host synchronizations in one forward, counted by CUDA's sync debug mode; None on the CPU."""
    if x.device.type != "cuda":
        return None
    from moe_lab.profiling import count_cuda_syncs

    with torch.no_grad():
        return count_cuda_syncs(lambda: layer(x))


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


def bench_shape(
    shape: Shape,
    repeats: int,
    include_naive: bool,
    device: str,
    dtype: torch.dtype = torch.float32,
    validate_inputs: bool = True,
) -> dict:
    torch.manual_seed(0)
    cfg = MoEConfig(
        d_model=shape.d_model,
        d_expert=shape.d_expert,
        n_experts=shape.n_experts,
        top_k=shape.top_k,
        dispatch="sorted",
        validate_inputs=validate_inputs,
    )
    reference = MoELayer(cfg).to(device, dtype)
    dense = DenseFFN(shape.d_model, shape.top_k * shape.d_expert).to(device, dtype)
    x = torch.randn(shape.n_tokens, shape.d_model, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape.n_tokens, shape.d_model, device=device, dtype=dtype)
    layers, unavailable, host_syncs = {}, {}, {}
    include_naive = include_naive and shape.n_experts <= NAIVE_MAX_EXPERTS
    for name in backends_to_time(include_naive, device):
        layer = MoELayer(MoEConfig(**{**cfg.__dict__, "dispatch": name})).to(device, dtype)
        layer.load_state_dict(reference.state_dict())
        error = runs(layer, x)
        if error is not None:
            unavailable[name] = error
            continue
        layers[name] = layer
        host_syncs[name] = cuda_syncs_per_forward(layer, x)
    result = {"shape": shape.__dict__, "seconds": {}, "ratio_dense_over_backend": {}}
    if unavailable:
        result["unavailable"] = unavailable
    if torch.device(device).type == "cuda":
        result["cuda_host_syncs_per_forward"] = host_syncs
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
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="weights and activations"
    )
    parser.add_argument(
        "--no-input-check",
        action="store_true",
        help="build the layers with validate_inputs=False (on a GPU its finiteness check is a"
        " host synchronization per forward)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON result")
    parser.add_argument(
        "--results-dir", default=None, help="where the JSON goes (default: benchmarks/results)"
    )
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
    dtype = DTYPES[args.dtype]
    names = backends_to_time(not args.no_naive, args.device)
    header = f"{'shape':<36} {'mode':<17} " + " ".join(f"{name:>8}" for name in names)
    print("time(dense FFN of width K*F) / time(MoE layer); 1.00 = routing is free")
    print(header)
    for shape in shapes:
        result = bench_shape(
            shape, repeats, not args.no_naive, args.device, dtype, not args.no_input_check
        )
        rows.append(result)
        for name, error in result.get("unavailable", {}).items():
            print(f"{shape.label()}: {name} skipped: {error}")
        for mode, ratios in result["ratio_dense_over_backend"].items():
            cells = " ".join(
                f"{ratios[name]:8.2f}" if name in ratios else f"{'-':>8}" for name in names
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
    for name in backends_to_time(include_naive=False, device=args.device):
        if all(name in r["ratio_dense_over_backend"]["forward"] for r in grid_rows):
            summary[name] = {
                mode: geometric_mean([r["ratio_dense_over_backend"][mode][name] for r in grid_rows])
                for mode in ("forward", "forward_backward")
            }
    headline = next(r for r in rows if tuple(r["shape"].values()) == HEADLINE)
    head_ratio = headline["ratio_dense_over_backend"]["forward_backward"]["sorted"]
    payload = {
        "benchmark": "layer",
        "machine": machine_info(args.device),
        "dtype": args.dtype,
        "validate_inputs": not args.no_input_check,
        "quick": bool(args.quick),
        "retain_freed_memory": retained,
        "repeats": repeats,
        "rows": rows,
        "geomean_ratio": summary,
        "headline_sorted_forward_backward": head_ratio,
    }
    if not args.no_write:
        path = write_result("layer", payload, getattr(args, "results_dir", None))
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
