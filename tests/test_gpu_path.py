"""The GPU path's code, run on the CPU (CI has no GPU): bfloat16 against the float32 reference,
host synchronizations found structurally, the benchmark's dtype and JSON, the GPU check script.
tests/test_gpu.py runs the same checks on CUDA, with CUDA's own sync counter."""

import json
import os
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from moe_lab import MoEConfig, MoELayer
from moe_lab.bench import common as bench_common
from moe_lab.bench.layer import Shape, bench_shape
from moe_lab.bench.layer import run as run_layer_bench
from moe_lab.bench.results import layer_ratio_markdown
from moe_lab.dispatch import get_backend
from moe_lab.profiling import audit_operators

ROOT = Path(__file__).resolve().parents[1]
GPU_BACKENDS = ["grouped", "sorted_python"]  # what a GPU runs (sorted's C++ engine is CPU-only)


def layer_and_input(dtype, dispatch="naive", **overrides):
    torch.manual_seed(0)
    cfg = MoEConfig(d_model=32, d_expert=64, n_experts=8, top_k=2, dispatch=dispatch, **overrides)
    layer = MoELayer(cfg).to(dtype)
    x = torch.randn(96, 32).to(dtype)
    return layer, x


def forward_backward(layer, x, backend):
    layer.dispatch = get_backend(backend)
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    upstream = torch.linspace(-1, 1, out.y.numel()).view_as(out.y).to(out.y.dtype)
    (out.y * upstream).sum().backward()
    grads = {"x": x.grad.float()}
    grads.update({name: p.grad.float() for name, p in layer.named_parameters()})
    return out, grads


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bfloat16_backend_equals_naive_bfloat16_and_float32(backend):
    layer32, x32 = layer_and_input(torch.float32)
    layer16, x16 = layer_and_input(torch.bfloat16)
    ref32, grads32 = forward_backward(layer32, x32, "naive")
    ref16, grads16 = forward_backward(layer16, x16, "naive")
    out16, ours16 = forward_backward(layer16, x16, backend)
    assert out16.y.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: one rounding is a relative 2**-9 ~ 0.2%; the backends
    # sum the same products in other orders, so allow a few roundings of the largest entry
    assert torch.equal(out16.routing.indices, ref16.routing.indices)
    scale = ref32.y.abs().max().item()
    torch.testing.assert_close(out16.y.float(), ref16.y.float(), rtol=0, atol=0.02 * scale)
    for name, grad in ours16.items():
        gscale = grads32[name].abs().max().item()  # float32's gradients: the scale only
        torch.testing.assert_close(grad, grads16[name], rtol=0, atol=0.03 * gscale, msg=name)
    # against float32: a token whose two best experts score within bfloat16's rounding of each
    # other may pick another expert; compare the tokens routed alike (nearly all of them)
    same = (out16.routing.indices == ref32.routing.indices).all(dim=-1)  # (N,)
    assert same.float().mean() > 0.9
    torch.testing.assert_close(out16.y.float()[same], ref32.y[same], rtol=0, atol=0.03 * scale)


def forward_syncs(layer, x, backend):
    layer.dispatch = get_backend(backend)
    with torch.no_grad(), audit_operators() as audit:
        layer(x)
    return audit


def test_grouped_dropless_forward_has_no_host_sync():
    layer, x = layer_and_input(torch.float32, validate_inputs=False)
    audit = forward_syncs(layer, x, "grouped")
    assert audit.n_host_syncs == 0, audit.host_syncs
    assert audit.counts["aten._grouped_mm"] == 3  # gate, up, down: one call each for all experts


def test_host_syncs_of_each_path_are_the_documented_ones():
    layer, x = layer_and_input(torch.float32, validate_inputs=False)
    # sorted, either engine: the per-expert loop needs the E+1 offsets on the host (one tolist)
    for backend in ("sorted", "sorted_python"):
        audit = forward_syncs(layer, x, backend)
        assert audit.n_host_syncs == 1 and audit.counts["Tensor.tolist"] == 1, audit.host_syncs
    # the reference loop: one nonzero (torch.where) per expert, E = 8
    assert (
        forward_syncs(layer, x, "naive").host_syncs["nonzero: the output size depends on the data"]
        == 8
    )
    # validate_inputs adds exactly one: bool(isfinite(x).all())
    checked, _ = layer_and_input(torch.float32)
    audit = forward_syncs(checked, x, "grouped")
    assert audit.n_host_syncs == 1 and audit.counts["aten._local_scalar_dense"] == 1
    # a capacity makes the kept rows data-dependent: grouped then checks keep.all() and runs
    # nonzero (sort_by_expert's docstring says two)
    capped, _ = layer_and_input(torch.float32, validate_inputs=False, capacity_factor=1.0)
    assert forward_syncs(capped, x, "grouped").n_host_syncs == 2


def test_loss_and_statistics_need_no_host_sync():
    # the balancing losses and tokens_per_expert count with scatter_add, not bincount
    layer, x = layer_and_input(torch.float32, validate_inputs=False, z_loss_weight=1e-3,
                               seq_aux_loss_weight=1e-4)  # fmt: skip
    with torch.no_grad(), audit_operators() as audit:
        routing = layer.router(x)
        layer.balancing_losses(routing, batch_size=1)
        routing.tokens_per_expert()
    assert audit.n_host_syncs == 0, audit.host_syncs
    assert "aten.bincount" not in audit.counts


def test_audit_flags_what_syncs_on_cuda():
    x = torch.arange(8.0)
    with audit_operators() as audit:
        x[x > 3]  # boolean indexing
        torch.where(x > 3)  # one-argument where is nonzero
        torch.bincount(x.long())
        float(x.sum())
        x.tolist()
        x * 2 + 1  # none of these
    assert audit.n_host_syncs == 5, audit.host_syncs
    assert audit.counts["aten.mul"] == 1 and audit.counts["aten.add"] == 1


def test_bench_shape_in_bfloat16_reports_every_backend():
    result = bench_shape(Shape(64, 16, 32, 4, 2), 1, include_naive=True, device="cpu",
                         dtype=torch.bfloat16)  # fmt: skip
    ratios = result["ratio_dense_over_backend"]["forward"]
    assert {"naive", "sorted", "sorted_python", "grouped"} <= set(ratios)
    assert "cuda_host_syncs_per_forward" not in result  # counted on CUDA only


def test_layer_bench_writes_dtype_and_device_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_common, "RESULTS_DIR", tmp_path)
    tiny = [Shape(512, 16, 16, 8, 2), Shape(512, 16, 16, 8, 1)]  # N, D, F, E, K
    monkeypatch.setattr("moe_lab.bench.layer.grid", lambda quick: tiny)
    monkeypatch.setattr("moe_lab.bench.layer.HEADLINE", tuple(tiny[0].__dict__.values()))
    args = Namespace(quick=True, repeats=1, no_naive=True, device="cpu", dtype="bfloat16",
                     no_write=False, retain_freed_memory=False, no_input_check=True)  # fmt: skip
    run_layer_bench(args)
    (path,) = tmp_path.glob("layer-cpu-*.json")
    saved = json.loads(path.read_text())
    assert saved["dtype"] == "bfloat16" and saved["validate_inputs"] is False
    assert saved["machine"]["device_name"] == bench_common.cpu_name()
    # what notebook 07 shows of such a result (for a layer-cuda-*.json: the GPU's name)
    assert f"**{bench_common.cpu_name()}** (bfloat16" in layer_ratio_markdown(path.name, saved)


def test_gpu_check_script_refuses_without_cuda_and_names_its_parts():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    text = script.read_text()
    assert "-m gpu" in text and "--device cuda --dtype bfloat16" in text
    assert os.access(script, os.X_OK)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run for minutes")
    done = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": str(Path(os.sys.executable))})  # fmt: skip
    assert done.returncode != 0
    assert "no CUDA device" in done.stdout + done.stderr
